"""What the course's own scripts import from `utils`, so that they run unchanged here: its sanity_check.py loads
our GPT-2 with `GPT2Model.from_pretrained(model=size, **model_size_to_params(size))`."""
from config import PRESETS
from flags import UserError
from models.gpt2 import COURSE_SIZES


def model_size_to_params(model_size: str) -> dict[str, int]:
    """The sizes of a GPT-2 preset by the course's names: `d` (hidden size), `l` (layers) and `num_heads`."""
    if model_size not in PRESETS:
        raise UserError(f"model size {model_size!r} is not supported; the sizes are {', '.join(PRESETS)}")
    return {name: PRESETS[model_size][field] for name, field in COURSE_SIZES.items()}
