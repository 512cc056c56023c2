"""The one loader of base models, tokenizers and LoRA adapters, for training, generation, MMLU
and `empo plan` (paper §4: Zephyr-7B-sft-full + LoRA), with the chat templates and BOS handling.

Checks fail before any weights are read, naming the path or key: `resolve_model_path`,
`model_module_names` (meta-device instantiation from the config only), `lora_config`,
`check_adapter_dir` / `check_adapter` (adapter files, and shapes against the base on the meta
device). Config problems are TrainErrors; an unusable model, tokenizer or adapter is a ModelError
(a TrainError and an EvalError alike).
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo.errors import ConfigError, ModelError, TrainError
from empo.options import require_attention
from empo.store import adapter_problem

if TYPE_CHECKING:  # heavy imports stay inside the functions
    import peft
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from empo.config import ExperimentConfig

log = logging.getLogger(__name__)

# The stock zephyr-7b-beta chat template (tokenizer_config.json of HuggingFaceH4/zephyr-7b-beta).
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# The same text as ZEPHYR_CHAT_TEMPLATE, with each assistant content + EOS inside
# {% generation %} markers, so trl's assistant_only_loss trains the listener turns only. HF renders
# with trim_blocks=True, which eats a newline written right after {% endgeneration %}: the newline
# that follows EOS is emitted as {{ '\n' }} (and stays out of the loss, as the role headers do).
ZEPHYR_TRAINING_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = ("bfloat16", "float16", "float32")


def torch_dtype(name: str) -> "torch.dtype":
    """`model.dtype` string -> torch dtype."""
    import torch

    if name not in DTYPES:
        raise TrainError(f"model.dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION_MARKER.search(template))


def training_template(chat_template: str | None) -> str:
    """The chat template used for SFT: one with {% generation %} markers rendering the same text
    (a BOS prefix added by `set_bos` is kept)."""
    if has_generation_markers(chat_template):
        return chat_template  # type: ignore[return-value]
    prefix = BOS_PREFIX if (chat_template or "").startswith(BOS_PREFIX) else ""
    body = (chat_template or "")[len(prefix):]
    if chat_template is not None and body.strip() == ZEPHYR_CHAT_TEMPLATE.strip():
        return prefix + ZEPHYR_TRAINING_TEMPLATE
    raise TrainError(
        "the tokenizer's chat template has no {% generation %} markers and is not Zephyr's, so the loss "
        "cannot be restricted to listener turns: set model.chat_template to a .jinja file whose "
        "assistant content + EOS is wrapped in {% generation %}...{% endgeneration %}"
    )


# ------------------------------------------------------------------------------------- BOS

# Put in front of a chat template so that every rendering starts with exactly one BOS. trl
# tokenizes conversations with the chat template and no added special tokens, and generation does
# the same, so the template is the one place where the BOS comes from.
BOS_PREFIX = "{{ bos_token }}"


def tokenizer_adds_bos(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Whether `tokenizer(text)` (its own add_special_tokens default) starts with BOS."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def template_writes_bos(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Whether the chat template itself starts its text with the BOS token."""
    if not tokenizer.bos_token:
        return False
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    return text.startswith(tokenizer.bos_token)


def set_bos(tokenizer: "PreTrainedTokenizerBase", add_bos: bool | str = "auto") -> bool:
    """Make the tokenizer's chat template start with exactly one BOS, or none (`model.add_bos`:
    auto = as `tokenizer_adds_bos`); idempotent. Returns whether renderings start with BOS."""
    want = tokenizer_adds_bos(tokenizer) if add_bos == "auto" else bool(add_bos)
    if want and tokenizer.bos_token is None:
        raise ConfigError("model.add_bos: true, but the tokenizer has no BOS token")
    writes = template_writes_bos(tokenizer)
    if want and not writes:
        tokenizer.chat_template = BOS_PREFIX + tokenizer.chat_template
    elif writes and not want:
        if not tokenizer.chat_template.startswith(BOS_PREFIX):
            raise ConfigError("model.add_bos: false, but the chat template writes the BOS token "
                              "itself; use model.add_bos: auto or a template without it")
        tokenizer.chat_template = tokenizer.chat_template[len(BOS_PREFIX):]
    return want


# -------------------------------------------------------------------------------- base model


def resolve_model_path(cfg: "ExperimentConfig") -> str:
    """A local model directory (absolute) or a Hub id; TrainError when neither can work."""
    value = cfg.model.name_or_path
    local = cfg.resolve(value)
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise TrainError(f"model.name_or_path: {local} is not a model directory (no config.json)")
        return str(local)
    looks_local = value.startswith((".", "/", "~")) or not _HUB_ID.match(value)
    if looks_local:
        raise TrainError(f"model.name_or_path: {local} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(value, "config.json")
        if not isinstance(cached, str):
            raise TrainError(
                f"model.name_or_path: {value!r} is not a local directory ({local} does not exist) and "
                "not in the Hub cache (HF_HUB_OFFLINE=1)"
            )
    return value


def _chat_template_override(cfg: "ExperimentConfig") -> str | None:
    if not cfg.model.chat_template:
        return None
    path = cfg.resolve(cfg.model.chat_template)
    if not path.is_file():
        raise TrainError(f"model.chat_template: {path} does not exist")
    return path.read_text()


def load_tokenizer_from(path: str, chat_template: str | None = None, add_bos: bool | str = "auto",
                        padding_side: str = "right") -> "PreTrainedTokenizerBase":
    """The one tokenizer loader (training and every generation backend): `chat_template` (text)
    replacing the tokenizer's, the BOS per `model.add_bos`, and a pad token it already has — no
    token is ever added (no embedding resize): pad = its pad, else unk, else EOS."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of '{path}' ({err})") from None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ModelError(f"{path}: the tokenizer has no chat template; set model.chat_template")
    set_bos(tokenizer, add_bos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise ModelError(f"{path}: the tokenizer has no EOS token")
    return tokenizer


def load_tokenizer(cfg: "ExperimentConfig", padding_side: str = "right") -> "PreTrainedTokenizerBase":
    """The configured base model's tokenizer (`load_tokenizer_from`)."""
    return load_tokenizer_from(resolve_model_path(cfg), _chat_template_override(cfg),
                               cfg.model.add_bos, padding_side)


def quantization_config(quantization: str, dtype: str) -> Any:
    """transformers' BitsAndBytesConfig for `model.quantization` (None for none): nf4 = 4-bit
    NF4 weights computing in `dtype` (QLoRA). ConfigError where bitsandbytes or CUDA is missing."""
    if quantization in (None, "none"):
        return None
    if quantization != "nf4":
        raise ConfigError(f"model.quantization: {quantization!r} must be none or nf4")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.quantization: nf4 needs the bitsandbytes package "
                          "(pip install bitsandbytes), which is not installed")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("model.quantization: nf4 needs a CUDA GPU (bitsandbytes 4-bit); none is "
                          "visible here. `empo plan` and `--dry-run` work without one")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch_dtype(dtype))


def load_causal_lm(path: str, dtype: str = "auto", attn_implementation: str | None = None,
                   quantization: str = "none") -> "PreTrainedModel":
    """The one base-model loader: a causal LM in `dtype` (4-bit NF4 with `quantization: nf4`,
    placed on this process's GPU) with the attention implementation asked for."""
    from transformers import AutoModelForCausalLM


    require_attention(attn_implementation)
    kwargs: dict[str, Any] = {"dtype": "auto" if dtype == "auto" else torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    quantized = quantization_config(quantization, "bfloat16" if dtype == "auto" else dtype)
    if quantized is not None:
        kwargs.update(quantization_config=quantized, device_map={"": _local_cuda_device()})
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load base model '{path}' ({err})") from None


def load_base_model(cfg: "ExperimentConfig") -> "PreTrainedModel":
    """The configured base model (`load_causal_lm`)."""
    return load_causal_lm(resolve_model_path(cfg), cfg.model.dtype, cfg.model.attn_implementation,
                          cfg.model.quantization)


def _local_cuda_device() -> int:
    """This process's GPU (LOCAL_RANK under torchrun/SLURM tasks, else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def meta_model(config: Any) -> "torch.nn.Module":
    """The model built on the meta device from its transformers config: shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_model_config(path: str | Path) -> Any:
    """A transformers config from a model directory, a config.json file, or a Hub id."""
    from transformers import AutoConfig

    path_str = str(path)
    candidate = Path(path_str)
    try:
        if candidate.is_file():
            data = json.loads(candidate.read_bytes())
            if not isinstance(data, dict):
                raise TrainError(f"{candidate}: the model config must be a JSON object")
            model_type = data.pop("model_type", None)
            if model_type is None:
                raise TrainError(f"{candidate}: no 'model_type' in the model config")
            return AutoConfig.for_model(model_type, **data)
        return AutoConfig.from_pretrained(path_str)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrainError(f"{candidate}: invalid JSON ({err})") from None
    except (OSError, ValueError, TypeError) as err:
        raise TrainError(f"{path_str}: cannot read the model config ({err})") from None


def linear_modules(model: "torch.nn.Module") -> dict[str, "torch.nn.Module"]:
    """Full name -> module for every layer LoRA can target (Linear, Embedding, Conv1D)."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear, torch.nn.Embedding)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:  # pragma: no cover
        pass
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def module_short_names(model: "torch.nn.Module") -> list[str]:
    """Sorted last name components of the targetable layers (q_proj, ..., lm_head)."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_modules(model)})


def model_module_names(cfg: "ExperimentConfig") -> list[str]:
    """The targetable module names of the base, from its config alone (meta device)."""
    return module_short_names(meta_model(load_model_config(resolve_model_path(cfg))))


# ------------------------------------------------------------------------------------ LoRA


def check_lora_values(cfg: "ExperimentConfig") -> None:
    """r > 0, alpha > 0, dropout in [0, 1), at least one target module."""
    lora = cfg.lora
    if lora.r <= 0:
        raise TrainError(f"lora.r: {lora.r} must be > 0")
    if lora.lora_alpha <= 0:
        raise TrainError(f"lora.lora_alpha: {lora.lora_alpha} must be > 0")
    if not 0.0 <= lora.lora_dropout < 1.0:
        raise TrainError(f"lora.lora_dropout: {lora.lora_dropout} must be in [0, 1)")
    if not lora.target_modules:
        raise TrainError("lora.target_modules: empty; name at least one module")


def check_target_modules(targets: Iterable[str], available: Iterable[str],
                         key: str = "lora.target_modules") -> None:
    """Every target must be a module name the model has; the error lists the names it has."""
    available = sorted(set(available))
    for name in targets:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TrainError(
                f"{key}: the model has no module '{name}'{hint}; "
                f"its modules are: {', '.join(available)}"
            )


def lora_config(cfg: "ExperimentConfig", module_names: Iterable[str] | None = None) -> "peft.LoraConfig":
    """peft LoraConfig from `cfg.lora`, validated (against `module_names` when given)."""
    import peft

    check_lora_values(cfg)
    if module_names is not None:
        check_target_modules(cfg.lora.target_modules, module_names)
        check_target_modules(cfg.lora.modules_to_save, module_names, "lora.modules_to_save")
    return peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=list(cfg.lora.target_modules),
        bias=cfg.lora.bias,
        use_rslora=cfg.lora.use_rslora,
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def lora_trainable_params(model: "torch.nn.Module", targets: Iterable[str], r: int) -> int:
    """r·(in + out) summed over the targeted Linear layers (what peft will add)."""
    import torch

    targets = set(targets)
    total = 0
    for name, module in linear_modules(model).items():
        if name.rsplit(".", 1)[-1] not in targets:
            continue
        if isinstance(module, torch.nn.Embedding):
            total += r * (module.num_embeddings + module.embedding_dim)
        elif isinstance(module, torch.nn.Linear):
            total += r * (module.in_features + module.out_features)
        else:  # Conv1D: weight is (in, out)
            total += r * sum(module.weight.shape)
    return total


# --------------------------------------------------------------------------------- adapters


def check_adapter_dir(adapter_dir: Path, what: str = "adapter") -> dict[str, Any]:
    """The adapter_config.json of a peft adapter directory; ModelError when it is not one."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ModelError(f"{what} {adapter_dir} does not exist")
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ModelError(f"{what} {adapter_dir} has no adapter_config.json (not a peft adapter directory)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{config_path}: invalid JSON ({err})") from None
    if not any((adapter_dir / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelError(f"{what} {adapter_dir} has no adapter_model.safetensors")

    problem = adapter_problem(adapter_dir)
    if problem:
        raise ModelError(f"{what} {adapter_dir} cannot be used: {problem}")
    return config


def _adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    safetensors_file = adapter / "adapter_model.safetensors"
    bin_file = adapter / "adapter_model.bin"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    if bin_file.is_file():
        import torch

        state = torch.load(bin_file, map_location="cpu", weights_only=True, mmap=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    raise ModelError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def check_adapter(base: "str | torch.nn.Module", adapter: Path) -> None:
    """ModelError unless every tensor of the peft adapter fits a module of the base model (`base`:
    a model path or Hub id, or an already loaded model).

    From a path the base is instantiated on the meta device (no memory, no weights read), so the
    check is cheap even for a 7B model and runs before anything is loaded (also before lm-eval
    loads it). A loaded model is read as it is (under ZeRO-3 by its parameters' full shapes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = Path(adapter)
    check_adapter_dir(adapter)
    shapes = _adapter_shapes(adapter)
    if isinstance(base, torch.nn.Module):
        model, base = base, getattr(base.config, "_name_or_path", "") or "the base model"
    else:
        try:
            config = AutoConfig.from_pretrained(base)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load base model config '{base}' ({err})") from None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    params = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}
    problems = []
    for key, shape in shapes.items():
        path = key.removeprefix("base_model.model.")
        if ".lora_" in path:
            module_path, _, rest = path.partition(".lora_")
            module = modules.get(module_path)
            if module is None:
                problems.append(f"{key}: base has no module {module_path}")
                continue
            fan_in = getattr(module, "in_features", getattr(module, "num_embeddings", None))
            fan_out = getattr(module, "out_features", getattr(module, "embedding_dim", None))
            is_a = rest.startswith(("A.", "embedding_A"))
            is_b = rest.startswith(("B.", "embedding_B"))
            if is_a and fan_in is not None and shape[-1] != fan_in:
                problems.append(f"{key}: shape {list(shape)}, base input size {fan_in}")
            if is_b and fan_out is not None and shape[0] != fan_out:
                problems.append(f"{key}: shape {list(shape)}, base output size {fan_out}")
        else:  # modules_to_save and the like: naming varies (tied weights, peft versions),
            # so only a parameter found under the same name is compared
            name = path.replace(".modules_to_save", "").replace(".original_module", "")
            if name in params and params[name] != shape:
                problems.append(f"{key}: shape {list(shape)}, base {list(params[name])}")
    if problems:
        more = f" ... ({len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelError(f"adapter {adapter} does not match base model '{base}': "
                        f"{'; '.join(problems[:5])}{more}")


def load_adapter(
    model: "PreTrainedModel", adapter_dir: Path, is_trainable: bool = False,
    adapter_name: str = "default", checked: bool = False,
) -> "peft.PeftModel":
    """`PeftModel.from_pretrained` after checking the adapter fits the base (`checked`: done)."""
    from peft import PeftModel

    if not checked:
        check_adapter(model, adapter_dir)
    try:
        return PeftModel.from_pretrained(
            model, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable
        )
    except (RuntimeError, ValueError, KeyError) as err:
        raise ModelError(f"adapter {adapter_dir} does not match base model: {err}") from None


def merge_adapter(model: "PreTrainedModel", adapter_dir: Path) -> "PreTrainedModel":
    """The base with the adapter merged into its weights (a plain transformers model)."""
    return load_adapter(model, adapter_dir).merge_and_unload()
