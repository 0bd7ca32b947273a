"""Peak memory per device of one training step, estimated from shapes: no weights, no forward pass.

`mode=check` (medr1/check/) calls `estimate_memory` with the model's shape (its config), its parameters
counted on the `meta` device after tuning, the run's precision and the step's sizes. Every term is a
product of shapes and byte sizes; nothing here is measured. docs/check.md has the measured accuracy.

Notation. L decoder layers, H hidden size, I MLP size, heads / kv attention and key-value heads,
d head dim, kvd = kv * d, V vocabulary; vision: D blocks of width E, MLP width M, h_v heads.
B prompts per device and step, b prompts per backward pass (algo.micro_batch_size; 0 = B),
G completions per prompt, n = b * G sequences per pass; P = the longest training prompt in tokens,
T = algo.max_completion_length (SFT: the longest target, G = 1), S = P + T; p = image patches per
prompt (image tokens x merge^2). Bytes: w for weights (model.dtype, or what a `*-true` precision makes
them), c for compute (2 under `bf16-mixed`, else w), 4 for what runs in fp32 whatever the precision
(RMSNorm internals, attention log-sum-exp, log-softmax). N_all and N_train parameters (all, trainable).

Terms (bytes):
  parameters    W  = N_all * w                      (/ world size under FSDP and DeepSpeed)
  reference     R  = N_all * w_model when beta > 0 and tuning=full: GRPOModule keeps a frozen deep
                     copy in model.dtype, never sharded; LoRA's reference is the policy with its
                     adapters off (R = 0); beta = 0 loads none
  gradients     Gr = N_train * w                    (/ world size when sharded)
  AdamW state   O  = 2 * N_train * w                (exp_avg, exp_avg_sq in the parameters' dtype)
  activations   A  = what autograd saves for backward in one policy pass of n sequences:
    per text token and decoder layer (attention keys and masks aside)
      a = 4 * 2 * (2H + 1)                   two RMSNorms: input, normalised input, rstd (fp32)
        + 4 * heads + c * 2H                 attention: log-sum-exp, rotated queries, output
        + c * (k * H + 4I)                   projection inputs (k = 2: q/k/v share one, gate/up
                                             another; k = 5 under autocast, which casts each
                                             projection's input on its own) and the MLP (gate
                                             output, activation, up output, their product)
        + 4 * (2H + heads + 2kvd + kv)       Qwen3's per-head query and key RMSNorms
      LoRA (frozen base): norms keep 4 * (H + 1) each, the MLP 3I, base projections nothing, and
        each adapter of input width f its dropout mask, dropped input and rank-r output (2f + r)
        (without dropout only the r outputs and its distinct inputs)
    per attention key position of a sequence: 2 * H * c (transformers repeats K/V to all heads
      before a masked SDPA; flash-attention-2: 2 * kvd * c), plus the mask converted to c bytes per
      (query, key) pair (eager attention: heads * (4 + c) of attention weights instead)
    shared prompt (the default; logprobs.py): the prompt pass over b*P tokens, the completion pass
      over n*T tokens attending n*S keys:
      A = L * [(b*P + n*T) * a + n*S * 2Hc + n*T*S * c + b*P * (2Hc + P*c)]      (b = 1: no prompt
          mask, K/V at kvd) + (b*P + n*T) * 4(2H + 1) (final norm) + n*T*H*c (lm_head input)
    full sequences (algo.shared_prompt_forward=false; also gradient checkpointing, which cannot keep
      a cache): n*S tokens, images repeated G times; with checkpointing A is only each layer's input
      (L * n*S * H * 4) and one layer's activations are recomputed at a time in backward
    vision tower, when it is trained, per patch: D * (4*4 + c * (11E + 3M + h_v)) + c * (3*2*14*14
      + 4E) (LayerNorms, qkv, rotary q/k, attention, projections, quick-GELU MLP; pixels; merger)
      for Qwen2-VL; a SwiGLU MLP keeps 4M and RMSNorms 2E + 1 each (Qwen2.5-VL), a GELU MLP 2M
      (Qwen3-VL, whose DeepStack mergers add 4E each); with checkpointing D * E * c for the blocks
      (their recompute follows the text layers' backward)
    autocast (`*-mixed`): + c bytes of every Linear/Conv weight (autocast's cast cache)
  KV, rollout   K  = L * (B*P + B*G*T) * 2*kvd * c  each prompt's keys and values once, each sample's own
                                                    (shared-prefix decoding); B*G*S for generate()
  KV, training  Kt = L * n * S * 2*kvd * c          the expanded cache of the policy pass, alive until its
                                                    logits are computed
  logits        Lg = 8 * n*T*V  (grad)              the saved fp32 log-softmax and the logits at the end of
                                                    the forward, two fp32 gradient copies as backward starts
                Lf = 2 * n*T*V * c                  the logits and their concatenation (forward end)
                Ls = 2 * n*T*V * c  (no grad)       reference / old log-probs
  working sets  one layer at a time, without grad: (3I + 4H) * c per token (the MLP's gate, up and
                product), over B*P tokens in the prefill (+ vision p * (M + 3E) * c per prompt), n*T
                in a reference pass; with grad, backward holds 2I * c per token of one layer's MLP
                gradients; sampling B*G * V * 16 (fp32 logits, filtered, softmax); AdamW step buffer
                N_train * w on CUDA (foreach: one sqrt(v) buffer), 2 * the largest tensor on CPU

Phases. Gradients are freed (set_to_none) only when the next update starts, so a step's rollout and
reference passes run with the previous step's gradients alive. Static = W + R + O (+ below):
  rollout    = static + Gr + Ap + K + prefill working set + sampling      Ap: the prompt pass's part of A
               when the update scores on the rollout's prefill (StepSizes.kept_prefill), else 0
  reference  = static + Gr + Ap + L*n*S*2*kvd*c + max(reference working set, Ls)  (also old log-probs;
               without the shared prompt: no cache, a working set over n*S tokens + n*S*S*(1 + c) mask)
  policy     = static + Gr' + A + max(Kt + Lf, Lg, backward working set)      Gr' = Gr from a step's
               second backward pass on (micro-batches), else only the lm_head's gradient
               checkpointing: static + Gr + A + max(Lg, recomputed layer + backward working set)
  optimizer  = static + Gr + AdamW step buffer
  validation = static + Gr + KV (data.eval_batch_size x (eval prompt + eval.max_new_tokens)) + its
               prefill working set
The peak is the largest phase. It is a steady-state step (the second onwards): AdamW's state
exists from the end of the first. Strategies: DDP adds its gradient buckets (Gr again); FSDP shards
W, Gr and O over the world size and gathers one decoder layer (x2 with prefetch); DeepSpeed ZeRO-3
holds 2 (bf16 weights) + 2 (gradients) + 12 (fp32 master weights and AdamW state) bytes per
parameter over the world size. On CUDA the context and library workspaces add 0.5 GiB outside
PyTorch's allocator (an assumption, not derived from shapes).

The per-token constants were read off what PyTorch saves for backward in the real modules
(torch.autograd.graph.saved_tensors_hooks, deduplicated by storage; transformers 5.24, torch 2.14,
SDPA): e.g. a = 32,792 bytes per token and layer for the bench model (H=256, I=1536, 4 heads, 2 kv
heads, fp32; 33,816 for a prompt token with its K/V), 23E + 4 floats per patch and vision block; the formula's A matches the saved bytes
within 1% (full: fp32, bf16 autocast, full sequences) and 6% (LoRA) on the tiny model, 2% on the bench
model (tests/test_check.py checks it on the tiny one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medr1.models.tuning import vision_tower

GIB = 2**30
CUDA_CONTEXT_BYTES = GIB // 2  # CUDA context, cuBLAS/cuDNN workspaces: outside the caching allocator
FP32 = 4
PATCH_PIXELS = 3 * 2 * 14 * 14  # a Qwen2-VL patch: 3 channels x 2 frames x 14 x 14


# --- what the estimate reads -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2-VL-style model (text decoder + vision tower) that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int  # text_config.max_position_embeddings
    vision_depth: int
    vision_width: int
    vision_mlp: int
    vision_heads: int
    merge: int  # spatial_merge_size: an image token is merge^2 patches
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3)
    vision_mlp_saves: int = 3  # M-wide tensors a vision MLP keeps: quick-GELU 3, GELU 2, SwiGLU 4
    vision_rms_norm: bool = False  # RMSNorms (input, normalised, rstd), not LayerNorms (input, mean, rstd)
    patch_pixels: int = PATCH_PIXELS  # channels x frames x patch^2
    vision_mergers: int = 1  # patch mergers (Qwen3-VL adds one per DeepStack layer)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a HF config: Qwen2/2.5/3-VL (`vision_config.depth`, `embed_dim` or `hidden_size`) or a
        LLaVA-style CLIP tower (`num_hidden_layers`, `hidden_size`, `intermediate_size`)."""
        text = getattr(config, "text_config", config)
        vision = getattr(config, "vision_config", None)
        hidden, heads = int(text.hidden_size), int(text.num_attention_heads)

        def vision_value(*names, default=0):
            for name in names:
                value = getattr(vision, name, None) if vision is not None else None
                if value is not None:
                    return value
            return default

        width = int(vision_value("embed_dim", "hidden_size"))
        mlp = vision_value("intermediate_size", default=None)
        return cls(
            layers=int(text.num_hidden_layers),
            hidden=hidden,
            intermediate=int(text.intermediate_size),
            heads=heads,
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
            vocab=int(text.vocab_size),
            context=int(getattr(text, "max_position_embeddings", 0) or 0),
            vision_depth=int(vision_value("depth", "num_hidden_layers")),
            vision_width=width,
            vision_mlp=int(mlp if mlp is not None else width * float(vision_value("mlp_ratio", default=4))),
            vision_heads=int(vision_value("num_heads", "num_attention_heads", default=1)),
            merge=int(vision_value("spatial_merge_size", default=1)),
            qk_norm=str(getattr(text, "model_type", "")).startswith("qwen3"),
            vision_mlp_saves={"quick_gelu": 3, "silu": 4, "swish": 4}.get(str(vision_value("hidden_act")), 2),
            vision_rms_norm=str(vision_value("hidden_act")) in ("silu", "swish"),  # Qwen2.5-VL pairs them
            patch_pixels=int(vision_value("in_channels", default=3))
            * int(vision_value("temporal_patch_size", default=1))
            * int(vision_value("patch_size", default=14)) ** 2,
            vision_mergers=1 + len(vision_value("deepstack_visual_indexes", default=()) or ()),
        )

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of the policy as it trains (after tuning), e.g. of a model on `meta`."""

    total: int
    trainable: int
    vision_trainable: bool  # the vision tower has trainable parameters (its activations are saved)
    largest_tensor: int  # elements of the largest trainable tensor (AdamW's per-tensor buffers on CPU)
    matmul_weights: int  # elements of Linear/Conv weights (autocast's cached bf16 copies)
    layer_parameters: int  # one decoder layer (what FSDP gathers at a time)
    lm_head: int  # elements of the lm_head's weight when trained, else 0
    lora: tuple[tuple[int, int], ...] = ()  # (in_features, rank) of each LoRA-adapted text linear
    lora_dropout: bool = False

    def lora_per_layer(self, layers: int) -> int:
        """Elements the adapters of one decoder layer keep per token: with dropout, each its mask and
        dropped input (2 * in) and its rank-r output; without, the inputs are the layer's own (one
        per distinct input width) and only the rank-r outputs are extra."""
        if self.lora_dropout:
            total = sum(2 * fan_in + rank for fan_in, rank in self.lora)
        else:
            total = sum(rank for _, rank in self.lora) + sum({fan_in for fan_in, _ in self.lora}) * layers
        return total // max(layers, 1)


def count_parameters(model, *, lora_dropout: float = 0.0) -> ParameterCounts:
    """Counts from a model (real or on the meta device), after `apply_tuning`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        vision = vision_tower(inner)
    except AttributeError:
        vision = None
    vision_modules = {id(module) for module in vision.modules()} if vision is not None else set()
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    matmul, lora, layer, head = 0, [], 0, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv3d | torch.nn.Conv2d):
            matmul += module.weight.numel()
        if name.endswith("lora_A.default") and id(module) not in vision_modules:
            lora.append((module.in_features, module.out_features))
        if not layer and name.endswith("layers.0") and "language_model" in name:
            layer = sum(p.numel() for p in module.parameters())
        if (
            name.endswith("lm_head")
            and getattr(module, "weight", None) is not None
            and module.weight.requires_grad
        ):
            head = module.weight.numel()  # its gradient is the first one backward makes
    return ParameterCounts(
        total=sum(p.numel() for p in parameters),
        trainable=sum(p.numel() for p in trainable),
        vision_trainable=vision is not None and any(p.requires_grad for p in vision.parameters()),
        largest_tensor=max((p.numel() for p in trainable), default=0),
        matmul_weights=matmul,
        layer_parameters=layer,
        lm_head=head,
        lora=tuple(lora),
        lora_dropout=lora_dropout > 0,
    )


@dataclass(frozen=True)
class Precision:
    """Byte sizes of one training run's tensors (medr1.precision names the trainer precisions)."""

    weight: int  # trainable and frozen weights of the policy
    compute: int  # activations, KV cache, logits
    reference: int  # the frozen reference copy (kept in model.dtype; Lightning does not convert it)
    autocast: bool  # `*-mixed`: matmuls cast weights and inputs to `compute`


@dataclass(frozen=True)
class StepSizes:
    """One optimiser step's sizes and the settings that change what is alive."""

    prompts: int  # B per device
    generations: int  # G (SFT: 1)
    micro_prompts: int  # b: prompts per backward pass
    prompt_tokens: int  # P: the longest training prompt
    completion_tokens: int  # T
    image_patches: int  # p: patches per prompt (the most image tokens x merge^2)
    eval_batch: int = 0  # data.eval_batch_size (0: no validation during training)
    eval_prompt_tokens: int = 0
    eval_new_tokens: int = 0
    algo: str = "grpo"  # grpo | sft
    reference: str | None = "copy"  # copy | adapters | None
    num_iterations: int = 1
    attention: str = "sdpa"  # sdpa | flash_attention_2 | eager
    checkpointing: bool = False
    shared_prompt: bool = True  # algo.shared_prompt_forward, and the model family can share prompts
    shared_rollout: bool = True  # the family samples G completions from one prefill (else generate()
    #                              repeats each prompt, images included, G times)
    device: str = "cpu"  # cpu | cuda
    strategy: str = "single"  # single | ddp | fsdp | deepspeed
    world_size: int = 1
    kept_prefill: bool = False  # the rollout's prompt pass runs with grad and the update scores on it
    #                             (GRPOModule._prefill_reusable): its activations live from the rollout on


@dataclass
class MemoryEstimate:
    terms: dict[str, int]  # bytes of each term (module docstring)
    phases: dict[str, dict[str, int]]  # phase -> the terms alive in it, in bytes

    def phase_total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> int:
        return self.phase_total(self.peak_phase)


# --- the formula -----------------------------------------------------------------------------


def text_bytes_per_token(shape: ModelShape, counts: ParameterCounts, precision: Precision) -> int:
    """a: bytes autograd keeps per text token and decoder layer, attention keys and masks aside."""
    h, i, c = shape.hidden, shape.intermediate, precision.compute
    attention = FP32 * shape.heads + 2 * h * c  # lse, rotated queries and the output (o_proj's input)
    if shape.qk_norm:  # per-head RMSNorms of queries and keys: input, normalised input, rstd
        attention += FP32 * (2 * h + shape.heads + 2 * shape.kv_dim + shape.kv_heads)
    if counts.lora:  # frozen norm weights: each RMSNorm keeps its input and rstd only
        norms = FP32 * 2 * (h + 1)
        adapters = counts.lora_per_layer(shape.layers)
        return norms + attention + c * (3 * i + adapters)
    norms = FP32 * 2 * (2 * h + 1)  # each RMSNorm: input, normalised input, rstd
    projection_inputs = (5 if precision.autocast else 2) * h
    return norms + attention + c * (projection_inputs + 4 * i)


def vision_block_bytes(shape: ModelShape, precision: Precision) -> int:
    """What one vision block keeps per patch: two norms, the qkv, projection and MLP inputs, rotary
    q/k and attention (6E), the MLP's activations."""
    c, width = precision.compute, shape.vision_width
    if shape.vision_rms_norm:  # RMSNorm runs in fp32: input, normalised input, rstd
        norms = 2 * FP32 * (2 * width + 1)
    else:  # LayerNorm: input, mean, rstd
        norms = 2 * (c * width + 2 * FP32)
    return norms + c * (9 * width + shape.vision_mlp_saves * shape.vision_mlp + shape.vision_heads)


def vision_bytes(shape: ModelShape, precision: Precision, patches: int, checkpointing: bool) -> int:
    """What autograd keeps for the vision tower over `patches` patches (when it is trained): every
    block's activations, or with checkpointing only each block's input (its recompute comes after the
    text layers' backward, so it is never alive with theirs), plus the pixels and the merger(s)."""
    c, width = precision.compute, shape.vision_width
    blocks = shape.vision_depth * (width * c if checkpointing else vision_block_bytes(shape, precision))
    return patches * (blocks + c * (shape.patch_pixels + 4 * width * shape.vision_mergers))


def attention_key_bytes(shape: ModelShape, precision: Precision, attention: str, masked: bool) -> int:
    """Per key position of one sequence and layer: the K and V autograd keeps."""
    repeated = attention != "flash_attention_2" and masked  # transformers repeats K/V for a masked SDPA
    return 2 * (shape.hidden if repeated or attention == "eager" else shape.kv_dim) * precision.compute


def mask_bytes(shape: ModelShape, precision: Precision, attention: str) -> int:
    """Per (query, key) pair of one sequence and layer: the converted mask or the attention weights."""
    if attention == "flash_attention_2":
        return 0
    if attention == "eager":
        return shape.heads * (FP32 + precision.compute)
    return precision.compute


@dataclass(frozen=True)
class PolicyPass:
    """What one policy pass (grad) over b prompts x G completions keeps alive, in bytes."""

    activations: int  # A: saved for backward (with checkpointing: the layer inputs only)
    kv_cache: int  # Kt: the expanded cache, alive until the logits are computed (shared prompt only)
    recomputed_layer: int  # checkpointing: one layer's activations, recomputed in backward
    backward_working_set: int  # gradients of one layer's MLP intermediates while it runs backward
    prompt_activations: int = 0  # the part of A the prompt pass saves (shared prompt only)


def policy_pass(
    shape: ModelShape, counts: ParameterCounts, precision: Precision, step: StepSizes
) -> PolicyPass:
    """The activation terms of one policy pass (module docstring: activations)."""
    b, group, prompt, completion = (
        step.micro_prompts,
        step.generations,
        step.prompt_tokens,
        step.completion_tokens,
    )
    n, total, layers, c = (
        b * group,
        step.prompt_tokens + step.completion_tokens,
        shape.layers,
        precision.compute,
    )
    per_token = text_bytes_per_token(shape, counts, precision)
    per_pair = mask_bytes(shape, precision, step.attention)
    keys = attention_key_bytes(shape, precision, step.attention, masked=True)
    norm_per_token = FP32 * ((shape.hidden + 1) if counts.lora else (2 * shape.hidden + 1))
    head = n * completion * (0 if counts.lora else shape.hidden * c)  # lm_head's input (frozen under LoRA)
    vision = 0
    if step.checkpointing or not step.shared_prompt:  # one full sequence per completion, no cache
        tokens = n * total
        head += tokens * norm_per_token  # the final norm runs over every position
        layer = tokens * per_token + tokens * keys + n * total * total * per_pair
        if counts.vision_trainable:  # the images are repeated G times
            vision = vision_bytes(shape, precision, n * step.image_patches, step.checkpointing)
        working_set = tokens * 2 * shape.intermediate * c
        if not step.checkpointing:
            return PolicyPass(layers * layer + head + vision, 0, 0, working_set)
        residual = FP32 if precision.autocast else precision.weight  # the residual stream's dtype
        inputs = layers * tokens * shape.hidden * residual + n * total * total  # + the boolean causal mask
        return PolicyPass(inputs + head + vision, 0, layer, working_set)
    prompt_keys = attention_key_bytes(shape, precision, step.attention, masked=b > 1)
    prompt_pairs = per_pair if b > 1 else 0  # a single prompt needs no padding mask (causal kernel)
    if counts.vision_trainable:
        vision = vision_bytes(shape, precision, b * step.image_patches, False)
    # the prompt pass (its layers, the final norm over its positions, the images), then the completions
    # on the expanded cache (their layers, final norm and lm_head input)
    prompt_pass = (
        layers * b * prompt * (per_token + prompt_keys + prompt * prompt_pairs)
        + b * prompt * norm_per_token
        + vision
    )
    completions = (
        layers * n * (completion * per_token + total * keys + completion * total * per_pair)
        + n * completion * norm_per_token
        + head
    )
    cache = layers * n * total * 2 * shape.kv_dim * c
    return PolicyPass(
        prompt_pass + completions, cache, 0, n * completion * 2 * shape.intermediate * c, prompt_pass
    )


def estimate_memory(
    shape: ModelShape, counts: ParameterCounts, precision: Precision, step: StepSizes
) -> MemoryEstimate:
    """Terms and phases of the peak memory per device (module docstring)."""
    w, c = precision.weight, precision.compute
    shard = step.world_size if step.strategy in ("fsdp", "deepspeed") else 1
    terms: dict[str, int] = {}
    if step.strategy == "deepspeed":  # ZeRO-3, bf16 compute: fp32 masters and AdamW state in the optimiser
        terms["parameters"] = counts.total * 2 // shard
        terms["gradients"] = counts.trainable * 2 // shard
        terms["adamw_state"] = counts.trainable * 12 // shard
    else:
        terms["parameters"] = counts.total * w // shard
        terms["gradients"] = counts.trainable * w // shard
        terms["adamw_state"] = 2 * counts.trainable * w // shard
    terms["reference_model"] = counts.total * precision.reference if step.reference == "copy" else 0
    if step.strategy == "ddp":
        terms["ddp_gradient_buckets"] = counts.trainable * w
    if step.strategy == "fsdp":
        terms["fsdp_gathered_layers"] = 2 * counts.layer_parameters * w
    if precision.autocast:
        terms["autocast_weight_copies"] = counts.matmul_weights * c
    if step.device == "cuda":
        terms["cuda_context"] = CUDA_CONTEXT_BYTES

    # the policy pass (grad), per micro-batch of b prompts
    n, total = step.micro_prompts * step.generations, step.prompt_tokens + step.completion_tokens
    vocab_cells = n * step.completion_tokens * shape.vocab
    policy = policy_pass(shape, counts, precision, step)
    terms["activations"] = policy.activations
    terms["kv_cache_training"] = policy.kv_cache
    terms["recomputed_layer"] = policy.recomputed_layer
    terms["backward_working_set"] = policy.backward_working_set
    if step.kept_prefill:
        terms["kept_prompt_activations"] = policy.prompt_activations
    terms["logits_training"] = 8 * vocab_cells
    terms["logits_training_forward"] = 2 * vocab_cells * c

    # passes without grad: rollout (whole batch), reference / old log-probs (per micro-batch), validation
    kv_per_position = shape.layers * 2 * shape.kv_dim * c
    working_set = (3 * shape.intermediate + 4 * shape.hidden) * c  # per token, one layer at a time
    vision_working_set = step.image_patches * (shape.vision_mlp + 3 * shape.vision_width) * c  # per prompt
    if step.algo == "grpo":
        sequences = step.prompts * step.generations
        # shared-prefix decoding (medr1.shared_prefix): each prompt's keys/values once, each sample's own;
        # generate() keeps a repeated prompt per sample
        cached = step.prompts * step.prompt_tokens + sequences * step.completion_tokens
        terms["kv_cache_rollout"] = kv_per_position * (cached if step.shared_rollout else sequences * total)
        prefills = step.prompts * (1 if step.shared_rollout else step.generations)
        terms["prefill_working_set"] = prefills * (step.prompt_tokens * working_set + vision_working_set)
        terms["sampling_buffers"] = sequences * shape.vocab * 4 * FP32
        if step.reference is not None or step.num_iterations > 1:
            if step.shared_prompt:  # one prompt pass, its cache expanded G ways for the completions
                terms["kv_cache_scoring"] = kv_per_position * n * total
                terms["scoring_working_set"] = n * step.completion_tokens * working_set
            else:  # full sequences: no cache, every position through every layer, an S x S mask
                terms["scoring_working_set"] = n * total * working_set + n * total * total * (1 + c)
            terms["logits_scoring"] = 2 * vocab_cells * c
    terms["optimizer_step_buffer"] = (
        counts.trainable * w // shard if step.device == "cuda" else 2 * counts.largest_tensor * w
    )
    if step.eval_batch:
        terms["kv_cache_validation"] = (
            kv_per_position * step.eval_batch * (step.eval_prompt_tokens + step.eval_new_tokens)
        )
        terms["validation_working_set"] = step.eval_batch * (
            step.eval_prompt_tokens * working_set + vision_working_set + shape.vocab * 4 * FP32
        )

    return MemoryEstimate(terms=terms, phases=phases_of(terms, counts, step, w, shard))


STATIC = (
    "parameters",
    "reference_model",
    "adamw_state",
    "ddp_gradient_buckets",
    "fsdp_gathered_layers",
    "autocast_weight_copies",
    "cuda_context",
)


def phases_of(terms: dict[str, int], counts: ParameterCounts, step: StepSizes, w: int, shard: int) -> dict:
    """Which terms are alive together in each phase of a step (module docstring: phases)."""

    def phase(*names: str) -> dict[str, int]:
        return {name: terms[name] for name in (*STATIC, *names) if terms.get(name)}

    def largest(*names: str) -> str:
        return max(names, key=lambda name: terms.get(name, 0))

    phases: dict[str, dict[str, int]] = {}
    if step.algo == "grpo":
        phases["rollout"] = phase(
            "gradients",
            "kept_prompt_activations",
            "kv_cache_rollout",
            "prefill_working_set",
            "sampling_buffers",
        )
        if "logits_scoring" in terms:  # the completion forward's layers, then its logits
            phases["reference"] = phase(
                "gradients",
                "kept_prompt_activations",
                "kv_cache_scoring",
                largest("scoring_working_set", "logits_scoring"),
            )
    if step.checkpointing:  # backward starts with the logits' gradients, then recomputes layer by layer
        recompute = terms["recomputed_layer"] + terms["backward_working_set"]
        policy = phase("activations", "gradients")
        if recompute > terms["logits_training"]:
            policy |= phase("recomputed_layer", "backward_working_set")
        else:
            policy |= phase("logits_training")
    else:
        end_of_forward = terms["kv_cache_training"] + terms["logits_training_forward"]
        policy = phase("activations")
        if end_of_forward > max(terms["logits_training"], terms["backward_working_set"]):
            policy |= phase("kv_cache_training", "logits_training_forward")
        else:
            policy |= phase(largest("logits_training", "backward_working_set"))
        # gradients exist from the second backward pass of a step on (else only the lm_head's so far)
        several_passes = step.micro_prompts < step.prompts
        policy["gradients"] = terms["gradients"] if several_passes else counts.lm_head * w // shard
    phases["policy"] = policy
    phases["optimizer"] = phase("gradients", "optimizer_step_buffer")
    if step.eval_batch:
        phases["validation"] = phase("gradients", "kv_cache_validation", "validation_working_set")
    return phases
