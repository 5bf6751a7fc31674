"""course_utils: the small shared package behind the course notebooks.

One module per job:

- ``env``        device, seed, run profile, environment report
- ``tokenizer``  the real GPT-2 BPE tokenizer (hub or offline)
- ``data``       course texts, tokenization, train/test split, batches
- ``model``      "Model 5", the course's own GPT
- ``pretrained`` pretrained models from the hub, with an honest offline fallback
- ``losses``     the loss functions the lessons teach
- ``train``      the one training loop every lesson uses
- ``measure``    timing and memory measurements
- ``plots``      loss curves and bar charts
- ``claims``     lecture claim vs measured figure, rendered as a table
"""

__version__ = "0.1.0"

#: The course's repository. It lives here and nowhere else: the notebooks' Colab
#: badge and install cell are generated from it (``python -m course_utils.notebook_header``)
#: and a test checks that every notebook agrees with it.
REPO_URL = "https://github.com/gpt-training-course/gpt-training-course"
REPO_BRANCH = "main"
