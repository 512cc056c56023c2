"""Tiny offline evaluation assets: EPITOME checkpoints in the published key layout, a BERTScore
model directory and an MMLU-format lm-eval task, all small enough for CPU tests."""
from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_VOCAB = 400
TINY_POSITIONS = 130  # RoBERTa positions start at pad id + 1: room for 128 tokens

_SUBJECTS = ["feelings", "weather", "music", "family", "travel", "school", "work", "friends",
             "holidays", "pets", "food", "sports"]
_WORDS = ("i am so happy sad angry afraid surprised proud lonely grateful excited nervous "
          "that my friend sister brother dog cat came home got a new job lost the game passed "
          "exam today yesterday last week sorry to hear great news how do you feel what "
          "happened really wow that sounds hard wonderful terrible i understand you must be "
          "tired glad hope things get better soon thank for telling me about it").split()


def sample_sentences(seed: int = 0, lines: int = 400) -> list[str]:
    """Short emotional-dialogue-like sentences (tokenizer training text, benchmark inputs)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "."
            for _ in range(lines)]


def tiny_roberta_tokenizer(out_dir: Path):
    """A byte-level BPE RoBERTa tokenizer trained on a few hundred lines, saved to `out_dir`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sample_sentences(), vocab_size=TINY_VOCAB, min_frequency=2,
                            show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges,
                                 model_max_length=TINY_POSITIONS - 2)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_roberta_config(vocab_size: int):
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=vocab_size, hidden_size=TINY_HIDDEN,
                         num_hidden_layers=TINY_LAYERS, num_attention_heads=2,
                         intermediate_size=2 * TINY_HIDDEN, max_position_embeddings=TINY_POSITIONS,
                         type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         initializer_range=0.2)


def random_epitome_state_dicts(config, seed: int = 0, share_seeker: bool = True,
                               attn_std: float = 1.0, head_std: float = 3.0) -> dict:
    """Random ER/EX/IP state dicts in the published layout (seeker weights shared like the
    originals when `share_seeker`). Cross-attention and head weights are drawn with std
    `attn_std`/sqrt(hidden) and `head_std`/sqrt(hidden), biases zero: with the encoders'
    initializer_range 0.2 the levels then vary with the response, not only the seeker."""
    import torch

    from empo.evaluate.epitome import ASPECTS, SEEKER_PREFIX, EpitomeClassifier

    torch.manual_seed(seed)
    states = {}
    for aspect in ASPECTS:
        model = EpitomeClassifier(config)
        for module, std in ((model.attn, attn_std), (model.empathy_classifier, head_std),
                            (model.rationale_classifier, head_std)):
            for name, param in module.named_parameters():
                if name.endswith("bias"):
                    torch.nn.init.zeros_(param)
                else:
                    torch.nn.init.normal_(param, std=std / config.hidden_size ** 0.5)
        states[aspect] = {k: v.detach() for k, v in model.state_dict().items()}
    if share_seeker:  # the same tensors: torch.save writes a copy into each file
        first = states[ASPECTS[0]]
        for aspect in ASPECTS[1:]:
            for key in states[aspect]:
                if key.startswith(SEEKER_PREFIX):
                    states[aspect][key] = first[key]
    return states


def _write_epitome(out: Path) -> None:
    import torch

    from empo.evaluate.epitome import CHECKPOINT_FILES

    encoder = out / "encoder"
    encoder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_roberta_tokenizer(encoder)
    config = tiny_roberta_config(len(tokenizer))
    config.save_pretrained(encoder)
    for aspect, state in random_epitome_state_dicts(config).items():
        torch.save(state, out / CHECKPOINT_FILES[aspect])


def _write_bertscore(out: Path) -> None:
    import torch
    from transformers import RobertaModel

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_roberta_tokenizer(out)
    torch.manual_seed(1)
    RobertaModel(tiny_roberta_config(len(tokenizer))).save_pretrained(out)


_TEMPLATE = {
    "output_type": "multiple_choice",
    "test_split": "test",
    "fewshot_split": "dev",
    "fewshot_config": {"sampler": "first_n"},
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                   "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}


def _questions(subject: str, count: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        answer = rng.randrange(4)
        wrong = [x for x in range(2, 19) if x != a + b]
        rng.shuffle(wrong)
        choices = [str(x) for x in wrong[:3]]
        choices.insert(answer, str(a + b))
        rows.append({"question": f"In {subject}, question {i + 1}: what is {a} plus {b}?",
                     "subject": subject, "choices": choices, "answer": answer})
    return rows


def _write_mmlu(out: Path) -> None:
    """Group `mmlu_tiny` of two subtasks (10 test + 5 dev questions each), MMLU's prompt format."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    subtasks = []
    for subject in ("arithmetic", "feelings"):
        name = f"mmlu_tiny_{subject}"
        files = {}
        for split, count in (("test", 10), ("dev", 5)):
            path = (out / f"{name}_{split}.jsonl").resolve()
            path.write_text("".join(json.dumps(r) + "\n" for r in _questions(subject, count, rng)))
            files[split] = str(path)  # absolute: lm-eval resolves data_files from its own cwd
        task = {"task": name, "task_alias": subject, "dataset_path": "json",
                "dataset_kwargs": {"data_files": files},
                "description": f"The following are multiple choice questions (with answers) "
                               f"about {subject}.\n\n", **_TEMPLATE}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        subtasks.append(name)
    group = {"group": "mmlu_tiny", "task": subtasks,
             "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
             "metadata": {"version": 1}}
    (out / "_mmlu_tiny.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def make_tiny_eval_assets(dir: Path) -> Path:
    """Create dir/epitome (checkpoints + encoder/), dir/bertscore and dir/mmlu; returns `dir`."""
    dir = Path(dir)
    _write_epitome(dir / "epitome")
    _write_bertscore(dir / "bertscore")
    _write_mmlu(dir / "mmlu")
    return dir
