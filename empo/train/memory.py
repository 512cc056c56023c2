"""`empo plan`: parameters and per-GPU memory of a training stage, without loading any weights.

The model is built on the meta device from `model.architecture` (a transformers config JSON;
`empo:models/mistral-7b.json` ships Mistral-7B's), so shapes are exact and nothing is read.

Per-GPU memory is composed from parts, because DeepSpeed's estimators assume every parameter is
trained, while with LoRA only the adapter is:

  base weights   the frozen base in `model.dtype` (2 bytes/param in bf16), no gradients and no
                 optimizer state: replicated on every GPU for ZeRO-0/1/2, partitioned (/N) for ZeRO-3.
                 With `model.quantization: nf4` the decoder's Linear weights take 4 bits + one fp32
                 absmax per 64-value block (0.5625 bytes/param); embeddings, LM head and norms stay
                 in `model.dtype`.
  LoRA states    DeepSpeed's own estimator applied to the trainable LoRA parameters only:
                 ZeRO-2 `estimate_zero2_model_states_mem_needs` = 2·P (16-bit params) + 18·P/N
                 (16-bit and fp32 grads, fp32 master params, Adam moments; only 2·P with CPU
                 optimizer offload); ZeRO-3 `estimate_zero3_model_states_mem_needs` =
                 4·largest layer (gathered) + 18·P/N. ZeRO-0/1 (no estimator in DeepSpeed):
                 4·P (16-bit params and grads) + 12·P fp32 master and moments (/N for ZeRO-1).
                 Without DeepSpeed (plain DDP) peft keeps the adapter in fp32: 16·P.
                 P counts `lora.modules_to_save` too (each a trained full copy of its module).
  DPO reference  `adapter_copy`: trl's frozen `ref` copy of the adapter, P params in the training
                 dtype (partitioned for ZeRO-3); `merged`: nothing extra (the base is the reference).
  activations    per micro-batch of b sequences × max_length s (DPO: 2b, chosen + rejected), per
                 token and layer in the training dtype: 6h + 2h_kv + 4i values (norm inputs and
                 outputs, q, k, v, attention output, gate, up, act(gate), act·up), plus for LoRA
                 one r-vector per targeted module and, with dropout > 0, a dropped copy of each
                 targeted module's input (+ a 1-byte mask). With gradient checkpointing only the
                 L layer inputs (b·s·h) are kept and one layer is recomputed at a time.
  attention      sdpa and flash keep no s×s matrix (flash/memory-efficient kernels); `eager`
                 keeps each layer's b·heads·s² softmax output in fp32 plus its cast to the
                 training dtype (all L layers, or the one recomputed with checkpointing).
  Liger          `use_liger_kernel` (trl applies Liger's layer kernels only, not its fused
                 cross-entropy): SwiGLU recomputes act(gate) in backward, −i values per token/layer.
                 Padding-free batches plan the same worst case (b × max_length tokens).
  LM head        trl's fused LM head never builds the full logits: one 4096-token × 32768-vocab
                 tile, plus the final hidden states it scores and their gradient.
  buffers        DeepSpeed's communication buckets from the config (reduce bucket ×2 for the
                 contiguous-gradient copy, all-gather bucket or ZeRO-3 prefetch bucket).

The total is what PyTorch allocates (`torch.cuda.max_memory_allocated`); the verdict adds a fixed
allowance for the CUDA context and allocator fragmentation before comparing it with
`cluster.gpu_memory_gb` (GiB).
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from empo import models
from empo.errors import TrainError
from empo.options import padding_free
from empo.train.common import (deepspeed_config_path, gradient_accumulation, load_deepspeed_config,
                               zero_stage)

if TYPE_CHECKING:
    from empo.config import ExperimentConfig

GIB = 1024**3
RUNTIME_OVERHEAD_GIB = 1.5  # CUDA context + allocator fragmentation, outside max_memory_allocated
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclasses.dataclass
class Plan:
    """The numbers `empo plan` prints (bytes unless named otherwise)."""

    stage: str
    architecture: str
    model_type: str
    base_params: int
    lora_params: int
    lora_r: int
    target_modules: list[str]
    modules_to_save: list[str]          # trained as full copies (counted in lora_params)
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    gpus_per_node: int
    nodes: int
    dtype: str
    per_device_batch: int
    sequences_per_micro_batch: int
    max_length: int
    gradient_checkpointing: bool
    gradient_accumulation: int | None
    reference: str | None
    memory: dict[str, int]
    cpu_memory: int
    gpu_memory_gb: float
    attention: str = "sdpa"
    options: list[str] = dataclasses.field(default_factory=list)  # performance options, in words

    @property
    def total(self) -> int:
        return sum(self.memory.values())

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def fits(self) -> bool:
        return self.total / GIB + RUNTIME_OVERHEAD_GIB <= self.gpu_memory_gb


def _architecture(cfg: "ExperimentConfig") -> tuple[str, Any]:
    if cfg.model.architecture:
        path = cfg.resolve(cfg.model.architecture)
        if not path.is_file():
            raise TrainError(f"model.architecture: {path} does not exist")
        return str(path), models.load_model_config(path)
    path = models.resolve_model_path(cfg)
    return path, models.load_model_config(path)


def _ds_settings(cfg: "ExperimentConfig", stage: str) -> tuple[dict[str, Any] | None, int, bool, bool]:
    ds = load_deepspeed_config(cfg, stage)
    zero = (ds or {}).get("zero_optimization", {})
    offload_opt = str((zero.get("offload_optimizer") or {}).get("device", "none")) in ("cpu", "nvme")
    offload_par = str((zero.get("offload_param") or {}).get("device", "none")) in ("cpu", "nvme")
    return ds, zero_stage(ds), offload_opt, offload_par


def _bucket(zero: dict[str, Any], key: str, auto: int, default: int) -> int:
    value = zero.get(key, default)
    return auto if value == "auto" else int(float(value))


def activation_bytes_per_token_layer(config: Any, targets: list[str], r: int, dropout: float,
                                     width: int, in_features: dict[str, int]) -> int:
    """Values kept for backward per token and layer (see the module docstring)."""
    h = config.hidden_size
    i = config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    values = 6 * h + 2 * kv * head_dim + 4 * i
    per_layer_targets = [t for t in targets if t in in_features]
    values += r * len(per_layer_targets)
    mask_bytes = 0
    if dropout > 0:
        dropped = sum(in_features[t] for t in per_layer_targets)
        values += dropped
        mask_bytes = dropped
    return values * width + mask_bytes


def plan_memory(cfg: "ExperimentConfig", stage: str = "sft", gpus_per_node: int | None = None,
                nodes: int | None = None, sequences: int = 1, reference: str | None = None) -> Plan:
    """Compute the plan for training stage `stage` on `nodes` × `gpus_per_node` GPUs, given the
    stage's facts from the registry (`stages.memory_plan`): `sequences` per example in a
    micro-batch (2: chosen + rejected) and its frozen `reference` (adapter_copy | merged | None)."""
    import torch


    if stage not in cfg.training_sections():
        raise TrainError(f"stage must be a training stage ({', '.join(cfg.training_sections())}), "
                         f"got {stage!r}")
    models.check_lora_values(cfg)
    gpn = gpus_per_node if gpus_per_node is not None else (cfg.cluster.gpus_per_node or 1)
    n_nodes = nodes if nodes is not None else (cfg.cluster.nodes or 1)
    if gpn < 1 or n_nodes < 1:
        raise TrainError(f"--gpus ({gpn}) and --nodes ({n_nodes}) must be >= 1")
    n_gpus = gpn * n_nodes
    section = getattr(cfg, stage)
    ds, zstage, offload_opt, offload_par = _ds_settings(cfg, stage)
    try:
        accumulation: int | None = gradient_accumulation(
            section.global_batch_size, section.per_device_train_batch_size, n_gpus, stage)
    except TrainError:
        accumulation = None

    arch_path, config = _architecture(cfg)
    model = models.meta_model(config)
    models.check_target_modules(cfg.lora.target_modules, models.module_short_names(model))
    base_params = sum(p.numel() for p in model.parameters())
    lora_params = models.lora_trainable_params(model, cfg.lora.target_modules, cfg.lora.r)
    models.check_target_modules(cfg.lora.modules_to_save, models.module_short_names(model),
                                "lora.modules_to_save")
    lora_params += sum(p.numel() for name, m in models.linear_modules(model).items()
                       if name.rsplit(".", 1)[-1] in cfg.lora.modules_to_save
                       for p in m.parameters())
    largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    in_features: dict[str, int] = {}
    for name, module in models.linear_modules(model).items():
        if isinstance(module, torch.nn.Linear):
            in_features.setdefault(name.rsplit(".", 1)[-1], module.in_features)
    in_features = {k: v for k, v in in_features.items() if k != "lm_head"}

    width = DTYPE_BYTES[cfg.model.dtype]
    train_width = 2 if section.bf16 else width
    memory: dict[str, int] = {}
    cpu = 0
    if cfg.model.quantization == "nf4":
        quantized = sum(m.weight.numel() for name, m in models.linear_modules(model).items()
                        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
        memory["base weights (nf4)"] = (int(quantized * (0.5 + 4 / 64))
                                        + width * (base_params - quantized))
    else:
        memory["base weights"] = width * base_params // (n_gpus if zstage == 3 else 1)
    if ds is None:  # DDP: peft keeps the adapter in fp32 (params, grads, 2 Adam moments)
        memory["LoRA states"] = 16 * lora_params
        lora_width = 4
    elif zstage in (0, 1):  # 16-bit params + grads, fp32 master + moments (partitioned by ZeRO-1)
        memory["LoRA states"] = 4 * lora_params + 12 * lora_params // (n_gpus if zstage == 1 else 1)
        lora_width = train_width
    elif zstage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            lora_params, num_gpus_per_node=gpn, num_nodes=n_nodes, cpu_offload=offload_opt)
        memory["LoRA states"] = gpu
        lora_width = train_width
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            lora_params, largest_layer, num_gpus_per_node=gpn, num_nodes=n_nodes,
            cpu_offload=offload_opt, cpu_offload_params=offload_par)
        memory["LoRA states"] = gpu
        lora_width = train_width
    if reference == "adapter_copy":
        memory[f"{stage.upper()} reference (adapter copy)"] = \
            lora_width * lora_params // (n_gpus if zstage == 3 else 1)

    sequences = section.per_device_train_batch_size * sequences
    tokens = sequences * section.max_length
    per_token_layer = activation_bytes_per_token_layer(
        config, cfg.lora.target_modules, cfg.lora.r, cfg.lora.lora_dropout, train_width, in_features)
    layers = config.num_hidden_layers
    trainer_args = section.trainer_args
    notes = []
    if trainer_args.get("use_liger_kernel"):  # Liger's SwiGLU keeps gate and up, not act(gate)
        per_token_layer -= config.intermediate_size * train_width
        notes.append("Liger layer kernels (SwiGLU recomputes act(gate))")
    if padding_free(cfg, stage):
        notes.append("padding-free rows (planned at the worst case, b × max_length tokens)")
    if reference and trainer_args.get("precompute_ref_log_probs"):
        notes.append("reference log-probs precomputed before training (no reference forward "
                     "in the steps; memory unchanged)")
    if section.gradient_checkpointing:
        memory["activations"] = tokens * (layers * config.hidden_size * train_width + per_token_layer)
    else:
        memory["activations"] = tokens * layers * per_token_layer
    if cfg.model.attn_implementation == "eager":  # softmax output in fp32 + its training-dtype cast
        per_layer = sequences * config.num_attention_heads * section.max_length ** 2 * (4 + train_width)
        memory["attention scores (eager)"] = per_layer * (1 if section.gradient_checkpointing else layers)

    # trl's fused LM head: one [4096 tokens × 32768 vocab] logits tile, plus the final hidden states
    # gathered for it and their gradient (no full logits are ever built)
    tile = min(tokens, 4096) * min(config.vocab_size, 32768) * train_width
    memory["LM head (tiled logits)"] = tile + 2 * tokens * config.hidden_size * train_width

    if ds is not None:
        zero = ds.get("zero_optimization", {})
        h2 = config.hidden_size * config.hidden_size
        buffers = 2 * _bucket(zero, "reduce_bucket_size", h2, 500_000_000) * train_width
        if zstage == 3:
            buffers += _bucket(zero, "stage3_prefetch_bucket_size", int(0.9 * h2), 50_000_000) * train_width
        elif zstage == 2 and not offload_opt:
            all_gather = _bucket(zero, "allgather_bucket_size", 500_000_000, 500_000_000)
            buffers += min(all_gather, lora_params) * train_width
        memory["DeepSpeed buffers"] = buffers

    return Plan(
        stage=stage, architecture=arch_path, model_type=getattr(config, "model_type", "?"),
        base_params=base_params, lora_params=lora_params, lora_r=cfg.lora.r,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=list(cfg.lora.modules_to_save), zero_stage=zstage if ds else 0,
        offload_optimizer=offload_opt, offload_params=offload_par, gpus_per_node=gpn,
        nodes=n_nodes, dtype=cfg.model.dtype, per_device_batch=section.per_device_train_batch_size,
        sequences_per_micro_batch=sequences, max_length=section.max_length,
        gradient_checkpointing=section.gradient_checkpointing, gradient_accumulation=accumulation,
        reference=reference, memory=memory, cpu_memory=int(cpu),
        gpu_memory_gb=cfg.cluster.gpu_memory_gb, attention=cfg.model.attn_implementation,
        options=notes,
    )


def format_plan(plan: Plan, name: str = "") -> str:
    """The plan as the text `empo plan` prints."""
    ds = f"ZeRO-{plan.zero_stage}" if plan.zero_stage else "no DeepSpeed (DDP)"
    if plan.offload_optimizer:
        ds += " + CPU optimizer offload"
    if plan.offload_params:
        ds += " + CPU parameter offload"
    pairs = plan.sequences_per_micro_batch > plan.per_device_batch
    accumulation = (f"{plan.gradient_accumulation}" if plan.gradient_accumulation is not None
                    else "global batch not divisible by this GPU count")
    lines = [
        f"empo plan{': ' + name if name else ''} — stage {plan.stage}, {plan.gpus} GPU(s) "
        f"({plan.nodes} node(s) × {plan.gpus_per_node}), {ds}, {plan.dtype}",
        f"  architecture       {plan.architecture} ({plan.model_type})",
        f"  base parameters    {plan.base_params:,}",
        f"  LoRA parameters    {plan.lora_params:,} trainable (r={plan.lora_r}; "
        f"{', '.join(plan.target_modules)}"
        f"{'; full copies of ' + ', '.join(plan.modules_to_save) if plan.modules_to_save else ''})",
        f"  micro-batch        {plan.per_device_batch} per GPU"
        f"{' (×2 sequences: chosen + rejected)' if pairs else ''} × {plan.max_length} "
        f"tokens, gradient accumulation {accumulation}, gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}",
    ]
    lines.append(f"  attention          {plan.attention}"
                 + "".join(f"; {note}" for note in plan.options))
    if plan.reference:
        lines.append(f"  {plan.stage.upper() + ' reference':<19}{plan.reference}")
    lines.append("  per-GPU memory (GiB)")
    for key, value in plan.memory.items():
        lines.append(f"    {key:<30} {value / GIB:8.2f}")
    lines.append(f"    {'total (allocated)':<30} {plan.total / GIB:8.2f}")
    lines.append(f"    {'+ CUDA context/fragmentation':<30} {RUNTIME_OVERHEAD_GIB:8.2f}")
    if plan.cpu_memory:
        lines.append(f"  CPU memory per node (DeepSpeed estimator): {plan.cpu_memory / GIB:.1f} GiB")
    need = plan.total / GIB + RUNTIME_OVERHEAD_GIB
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"  verdict: {verdict} in {plan.gpu_memory_gb:g} GiB per GPU "
                 f"({need:.1f} GiB needed, {100 * need / plan.gpu_memory_gb:.0f}%)")
    if not plan.fits:
        lines.append("  try: more GPUs (--gpus), deepspeed zero3 or zero2_offload, a smaller "
                     "per_device_train_batch_size, gradient_checkpointing, or a smaller lora.r")
    return "\n".join(lines)


def memory_problems(cfg: "ExperimentConfig", stage: str, variant: str, sequences: int = 1,
                    reference: str | None = None) -> list[tuple[str, str, str]]:
    """Preflight: (key, what, fix) when the planned per-GPU memory of training stage `stage`
    exceeds cluster.gpu_memory_gb (nothing to check on CPU jobs or without a memory size)."""
    if cfg.cluster.gpus_per_node <= 0 or cfg.cluster.gpu_memory_gb <= 0:
        return []
    plan = plan_memory(cfg, stage, sequences=sequences, reference=reference)
    if plan.fits:
        return []
    need = plan.total / GIB + RUNTIME_OVERHEAD_GIB
    return [("cluster.gpu_memory_gb", f"{stage} ({variant}) needs {need:.1f} GiB per GPU "
             "(`empo plan`), "
             f"more than {cfg.cluster.gpu_memory_gb:g}",
             f"lower {stage}.per_device_train_batch_size or {stage}.max_length, use "
             f"{stage}.deepspeed=zero3, or more GPUs (see `empo plan CONFIG`)")]



# ----------------------------------------------------------------------------- checkpoints

# Bytes per trainable parameter of a resumable checkpoint (the Trainer's checkpoint-N/):
# without DeepSpeed, the adapter in fp32 (peft keeps it so: 4) + AdamW's two fp32 moments
# (optimizer.pt: 8); with DeepSpeed, the adapter in the training dtype (2) + the engine's 16-bit
# module states of the trainable parameters (2; frozen ones excluded) + fp32 master weights and
# both moments (12). Scheduler, RNG and trainer state are kilobytes.
CHECKPOINT_BYTES_PER_PARAM = {False: 12, True: 16}
SUBMITIT_SIGNAL_LEAD_S = 90   # submitit's default (--signal=USR2@90)
SAVE_MARGIN = 1.5             # a shared filesystem's rate varies: room for a slower write
REQUEUE_S = 30                # after the save: the requeue itself


@dataclasses.dataclass(frozen=True)
class CheckpointPlan:
    """A training stage's resumable checkpoint and the signal lead that fits its write."""

    stage: str
    size: int              # bytes
    write_s: float         # at `gb_per_s`
    gb_per_s: float
    lead_s: int            # cluster.signal_lead_s, or derived from write_s
    derived: bool          # lead_s was derived (no cluster.signal_lead_s)

    def text(self) -> str:
        source = ("derived: 1.5 × the write + 30 s, at least 90" if self.derived
                  else "cluster.signal_lead_s")
        return (f"  checkpoint         {self.size / 1e9:.2f} GB (adapter + optimizer state of the "
                f"trainable parameters), {self.write_s:.0f} s to write at {self.gb_per_s:g} GB/s "
                f"(cluster.checkpoint_gb_per_s)\n"
                f"  signal lead        {self.lead_s} s before the time limit ({source}): the "
                "step in progress, its checkpoint, the requeue")


def checkpoint_plan(cfg: "ExperimentConfig", plan: Plan) -> CheckpointPlan:
    """The checkpoint of `plan`'s stage: its size (CHECKPOINT_BYTES_PER_PARAM × trainable
    parameters), its write time at cluster.checkpoint_gb_per_s and the signal lead."""
    deepspeed = deepspeed_config_path(cfg, plan.stage) is not None
    size = plan.lora_params * CHECKPOINT_BYTES_PER_PARAM[deepspeed]
    rate = cfg.cluster.checkpoint_gb_per_s
    write_s = size / (rate * 1e9)
    lead = cfg.cluster.signal_lead_s
    derived = lead is None
    if derived:
        lead = max(SUBMITIT_SIGNAL_LEAD_S, math.ceil(SAVE_MARGIN * write_s) + REQUEUE_S)
    return CheckpointPlan(plan.stage, size, write_s, rate, int(lead), derived)
