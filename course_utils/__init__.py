"""course_utils: the shared package behind the course notebooks.

Core modules, one job each (they never import a lesson module):

- ``env``        device, seed, run profile, environment report (``resolve_device``, ``profile_settings``)
- ``paths``      where the repository, its data and the cache are
- ``tokenizer``  the real GPT-2 BPE tokenizer (hub or offline)
- ``data``       course texts, tokenization, train/test split, batches
- ``model``      "Model 5", the course's own GPT; ``eval_mode``
- ``pretrained`` pretrained models from the hub, with an honest offline fallback
- ``losses``     the loss functions the lessons train with
- ``train``      the one training loop every lesson uses
- ``runs``       measured training runs: time per step and the exact step peak memory
- ``measure``    timing, and ``speed_verdict``: the one procedure that turns two timings into a verdict
- ``memory``     the one place for bytes: counts, analytic training state, exact measured peaks
- ``tables``     the one table renderer (text, HTML, Markdown)
- ``plots``      loss curves and bar charts
- ``claims``     lecture claim vs measured figure and verdict, facts, exercise results
- ``nbtools``    run and regenerate notebooks, full-profile results, notebook headers

``course_utils.lessons``: one module per lesson topic, the lesson in its name (``l1_levers``, ``l1_parallel``,
``l1_ddp``, ``l2_final_token``, ``l3_xfactor``, ``l4_freeze``, ``l5_sft``, ``l5_lora``).
"""

__version__ = "0.1.0"

#: The course's repository. It lives here and nowhere else: the notebooks' Colab
#: badge and install cell are generated from it (``python -m course_utils.nbtools header --fix``)
#: and a test checks that every notebook agrees with it.
REPO_URL = "https://github.com/gpt-training-course/gpt-training-course"
REPO_BRANCH = "main"
