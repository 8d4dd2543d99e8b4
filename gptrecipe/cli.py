"""`gptrecipe <stage> ...`: a thin command line over the library; each stage is also a Python function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGES_HELP = """stages, in recipe order:
  tokenizer   train / use the byte-level BPE tokenizer (train, encode, decode, stats)
  pretrain    pretrain a GPT on a weighted text mixture (next-token prediction)
  sample      sample from a checkpoint (temperature, top-k, top-p, stop strings, streaming)
  sft         supervised fine-tuning for chat on conversations (loss on the assistant's tokens)
  run         the main job: tokenizer -> pretrain -> samples -> run report, on the default corpus

Config: presets under configs/ (pretrain: --config NAME, models: --model NAME); override any field
with KEY=VALUE, e.g. `gptrecipe pretrain --config tiny train.max_steps=500 model.n_layer=2`.
"""


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a GPT on a text mixture",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Pretrain a GPT (next-token prediction) on a weighted mixture of corpora.\n\n"
                       "Examples:\n  gptrecipe pretrain --config tiny\n"
                       "  gptrecipe pretrain --config tiny --data my_texts/ train.max_steps=2000\n"
                       "  torchrun --nproc_per_node 2 -m gptrecipe pretrain --config tiny   # DDP")
    p.add_argument("--config", default="tiny", help="pretrain preset name (configs/pretrain/) or TOML path")
    p.add_argument("--model", help="model preset (configs/models/), e.g. tiny, small, gpt2, gpt3-small")
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="your own corpora (.txt/.jsonl/.parquet files or directories) instead of the preset's")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from .config import dump_toml
    from .pretrain import load_pretrain_config, pretrain

    paths, overrides = _split_paths(args.data, args.overrides)
    cfg = load_pretrain_config(args.config, overrides, model=args.model, data_paths=paths)
    if args.print_config:
        print(dump_toml(cfg), end="")
        return 0
    result = pretrain(cfg, resume=args.resume)
    if result.evals:
        print(f"done: step {result.final_step}, val loss {result.evals[-1]['val_loss']:.4f}, "
              f"report {cfg.run_dir / 'report.md'}")
    return 0


def _split_paths(paths: list[str] | None, overrides: list[str]) -> tuple[list[str] | None, list[str]]:
    """`--data a.txt dir/ train.lr=1e-3`: argparse gives the KEY=VALUE words to --data; hand them back."""
    if not paths:
        return paths, overrides
    keep = [p for p in paths if "=" not in p or Path(p).exists()]
    return keep, [p for p in paths if p not in keep] + list(overrides)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample text from a checkpoint",
                       description="Sample from a checkpoint. The prompt comes from --prompt or stdin.")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("--prompt", "-p", help="prompt text (default: read stdin if piped, else a newline)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=200)
    p.add_argument("--temperature", "-t", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1, help="samples drawn as one batch")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    import torch

    from .checkpoint import load_model, resolve_checkpoint
    from .runtime import pick_device
    from .sample import SamplingConfig, stream_to_terminal
    from .tokenizer import Tokenizer

    prompt = args.prompt
    if prompt is None:
        prompt = sys.stdin.read() if not sys.stdin.isatty() else "\n"
    ckpt = resolve_checkpoint(args.checkpoint)
    model, _ = load_model(ckpt, pick_device(args.device))
    model.eval()
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop=args.stop, num_samples=args.num_samples)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sys.stdout.write(prompt)
    stream_to_terminal(model, tok, prompt, cfg)
    return 0


def _add_sft(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning for chat (loss on assistant tokens only)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fine-tune a pretrained checkpoint on conversations.\n\n"
                       "Data: JSONL of {\"messages\": [{\"role\", \"content\"}, ...]} or {\"prompt\", \"response\"},\n"
                       "or builtin:chatterbot. Example:\n"
                       "  gptrecipe sft --init runs/speedrun/pretrain --data chats.jsonl train.max_steps=500")
    p.add_argument("--init", help="pretrained checkpoint or run dir to start from")
    p.add_argument("--data", help="conversations JSONL or builtin:chatterbot")
    p.add_argument("--config", help="SFT preset (configs/sft/) or TOML path")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=3e-4")
    p.set_defaults(func=_run_sft)


def _run_sft(args) -> int:
    from .sft import load_sft_config, sft

    overrides = list(args.overrides)
    overrides += [f"init={args.init}"] if args.init else []
    overrides += [f"data={args.data}"] if args.data else []
    cfg = load_sft_config(args.config, overrides)
    result = sft(cfg, resume=args.resume)
    if result.evals:
        print(f"done: step {result.final_step}, val loss {result.evals[-1]['val_loss']:.4f}, "
              f"report {cfg.run_dir / 'report.md'}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the main job: every stage on the default corpus, ending in a report",
                       description="Train a tokenizer, pretrain a tiny model on the default mixture "
                       "(Shakespeare, King James Bible, chatterbot dialogues), sample, and write "
                       "runs/<name>/report.md. Finishes in about 10 minutes on 2 CPU cores.")
    p.add_argument("--config", default="tiny", help="pretrain preset for the pretraining stage")
    p.add_argument("--name", default="speedrun", help="run name (output under runs/NAME)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for the pretraining config")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args) -> int:
    from .pipeline import run_pipeline

    report = run_pipeline(args.config, args.overrides, name=args.name, resume=args.resume)
    print(Path(report).read_text())
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .tokenizer import add_cli as add_tokenizer

    parser = argparse.ArgumentParser(prog="gptrecipe", description="Train, align and talk to your own GPT.",
                                     epilog=STAGES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    add_tokenizer(sub)
    _add_pretrain(sub)
    _add_sample(sub)
    _add_sft(sub)
    _add_run(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    known = [ConfigError, CheckpointError, FileNotFoundError]
    try:
        from .data import DataError
        from .sample import PromptTooLongError
        from .tokenizer import TokenizerError

        known += [DataError, TokenizerError, PromptTooLongError]
    except ImportError:
        pass
    try:
        return args.func(args)
    except tuple(known) as e:
        print(f"gptrecipe {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngptrecipe {args.stage}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
