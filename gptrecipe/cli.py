"""`gptrecipe <stage> ...`: a thin command line over the library; each stage is also a Python function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError

STAGES_HELP = """stages, in recipe order:
  tokenizer   train / use the byte-level BPE tokenizer (train, encode, decode, stats)
  pretrain    pretrain a GPT on a weighted text mixture (next-token prediction)
  sample      sample from a checkpoint (temperature, top-k, top-p, stop strings, streaming; --assistant)
  eval        in-context accuracy vs K (zero / one / few-shot) on JSONL or builtin tasks; loss, bits/byte
  finetune    GPT-1 fine-tuning: a task head on the extract token (classification, entailment, ...)
  sft         supervised fine-tuning for chat on conversations (loss on the assistant's tokens)
  rank        comparison data: sample K responses per prompt, ranked by you or by a labeler
  rm          reward model on rankings (pairwise or listwise loss); `rm score` scores responses
  ppo         RLHF with PPO-ptx against the reward model, KL-penalised to the SFT model
  rlhf        rank -> rm -> ppo for --rounds, each round on the current best policy
  run         the main job: every stage above on the embedded data, ending in one run report
  chat        talk to a chat model in the terminal (streaming, /reset, /save FILE, /system)
  serve       OpenAI-compatible API server (chat, completions, streaming) + web chat with feedback

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
    p.add_argument("--assistant", action="store_true",
                   help="frame the prompt as the next turn of a transcript between a human and a helpful AI "
                   "assistant (a base model prompted to act as an assistant); stops before the next 'Human:'")
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
    stop = list(args.stop)
    if args.assistant:
        from .evaluate.prompts import ASSISTANT_STOP, assistant_prompt

        prompt, stop = assistant_prompt(prompt), [*stop, ASSISTANT_STOP]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop=stop, num_samples=args.num_samples)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sys.stdout.write(prompt)
    stream_to_terminal(model, tok, prompt, cfg)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="in-context accuracy vs K (zero / one / few-shot); loss, perplexity, bits/byte",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluate a checkpoint (or a model behind an OpenAI-compatible endpoint): "
                       "accuracy of in-context\nlearning for each K (prompts as GPT-3: description, K solved "
                       "examples, the query), and loss,\nperplexity and bits per byte on corpora. Writes "
                       "runs/NAME/report.md, icl.png and results.json.\n\n"
                       "Task JSONL: an optional header line {\"description\", \"example_format\": \"{input} -> "
                       "{output}\", \"separator\"},\nthen items {\"input\", \"target\"} or {\"input\", "
                       "\"choices\": [...], \"answer\": i}, \"split\": \"train\" for solved examples.\n\n"
                       "Examples:\n  gptrecipe eval runs/speedrun/pretrain --tasks builtin:synthetic -k 0 1 8\n"
                       "  gptrecipe eval runs/speedrun/pretrain --tasks my_task.jsonl builtin:translate-zh-en "
                       "--corpus builtin:shakespeare\n"
                       "  gptrecipe eval --base-url http://localhost:8000/v1 --api-model my-model "
                       "--tasks my_task.jsonl")
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run dir (or give --base-url)")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="task .jsonl files or directories, builtin:synthetic[/FAMILY], builtin:translate-zh-en")
    p.add_argument("-k", "--shots", nargs="+", type=int, metavar="K", help="examples per prompt (default 0 1 2 4 8)")
    p.add_argument("--corpus", nargs="+", metavar="CORPUS",
                   help="loss / perplexity / bits per byte on these (files, directories, builtin:NAME)")
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint instead of a checkpoint, e.g. http://host:8000/v1")
    p.add_argument("--api-model", help="the model name at the endpoint")
    p.add_argument("--name", help="output under runs/NAME (default: eval)")
    p.add_argument("--config", help="eval preset (configs/eval/) or TOML path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. max_items=50 seed=1")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    import json

    from .evaluate.run import load_eval_config, run_eval

    overrides = list(args.overrides)
    ckpt = args.checkpoint
    if ckpt and "=" in ckpt and not Path(ckpt).exists():  # `gptrecipe eval KEY=VALUE ...`
        ckpt, overrides = None, [ckpt, *overrides]
    tasks, overrides = _split_paths(args.tasks, overrides)
    corpora, overrides = _split_paths(args.corpus, overrides)
    if ckpt and args.api_model:
        raise ConfigError("eval: give a checkpoint or --base-url with --api-model, not both")
    flags = [f"model={ckpt or args.api_model}"] if (ckpt or args.api_model) else []
    flags += [f"base_url={args.base_url}"] if args.base_url else []
    flags += [f"name={args.name}"] if args.name else []
    flags += [f"tasks={json.dumps(tasks)}"] if tasks else []
    flags += [f"corpora={json.dumps(corpora)}", *([] if tasks else ["tasks=[]"])] if corpora else []
    flags += [f"ks={json.dumps(args.shots)}"] if args.shots else []
    result = run_eval(load_eval_config(args.config, flags + overrides))
    print(f"report: {result.report}")
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="GPT-1 fine-tuning: a linear head on the extract token, L2 + 0.5 L1",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="GPT-1 style supervised fine-tuning: a linear head on the final hidden state of "
                       "an extract token,\nloss L2 + lambda * L1 (task + auxiliary language-model loss, "
                       "lm_coef=0.5).\n\nData (JSONL), by --task:\n"
                       "  classification   {\"text\", \"label\"}\n"
                       "  entailment       {\"premise\", \"hypothesis\", \"label\"}\n"
                       "  similarity       {\"text_a\", \"text_b\", \"label\"}   (both orders, hidden states added)\n"
                       "  multiple_choice  {\"context\", \"choices\": [...], \"answer\": i}\n\nExamples:\n"
                       "  gptrecipe finetune --init runs/speedrun/pretrain --task entailment --data nli.jsonl "
                       "--val-data nli_val.jsonl\n"
                       "  gptrecipe finetune score runs/finetune --data test.jsonl     # predictions and accuracy")
    p.add_argument("--init", help="pretrained checkpoint or run dir to start from")
    p.add_argument("--task", choices=["classification", "entailment", "similarity", "multiple_choice"])
    p.add_argument("--data", help="training JSONL (or, with `score`, the JSONL to predict)")
    p.add_argument("--val-data", help="validation JSONL (default: hold out val_fraction of --data)")
    p.add_argument("--config", help="finetune preset (configs/finetune/) or TOML path")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE | score CKPT",
                   help="config overrides (e.g. lm_coef=0.5 train.max_steps=500); or `score CHECKPOINT`")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args) -> int:
    from .finetune import finetune, load_finetune_config, score_file

    if ckpt := _score_checkpoint(args, "finetune", "examples.jsonl"):
        print(f"accuracy {score_file(ckpt, args.data, out=sys.stdout):.4f}")
        return 0
    flags = _with_flags(args, "init", "task", "data")
    cfg = load_finetune_config(args.config, flags + ([f"val_data={args.val_data}"] if args.val_data else []))
    result = finetune(cfg, resume=args.resume)
    if result.evals:
        print(f"done: step {result.final_step}, val accuracy {result.evals[-1]['val_accuracy']:.4f}, "
              f"report {cfg.run_dir / 'report.md'}")
    return 0


def _score_checkpoint(args, stage: str, example: str) -> str | None:
    """The checkpoint of `gptrecipe STAGE score CHECKPOINT --data FILE`, or None when not scoring."""
    if args.overrides[:1] != ["score"]:
        return None
    if len(args.overrides) != 2 or not args.data:
        raise ConfigError(f"usage: gptrecipe {stage} score CHECKPOINT --data {example}")
    return args.overrides[1]


def _with_flags(args, *names: str) -> list[str]:
    """The KEY=VALUE overrides plus `name=value` for each of these flags that was given."""
    return list(args.overrides) + [f"{n}={getattr(args, n)}" for n in names if getattr(args, n)]


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

    cfg = load_sft_config(args.config, _with_flags(args, "init", "data"))
    result = sft(cfg, resume=args.resume)
    if result.evals:
        print(f"done: step {result.final_step}, val loss {result.evals[-1]['val_loss']:.4f}, "
              f"report {cfg.run_dir / 'report.md'}")
    return 0


def _add_rank(sub) -> None:
    p = sub.add_parser("rank", help="sample K responses per prompt and rank them (you, or a labeler)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Comparison data for the reward model: for each prompt, sample K responses "
                       "from a model and rank them best to worst.\nEvery ranked prompt is saved at once; "
                       "run again to resume.\n\nExamples:\n"
                       "  gptrecipe rank runs/speedrun/sft --prompts my_prompts.txt -k 4          # rank by hand\n"
                       "  gptrecipe rank runs/speedrun/sft --labeler builtin:positivity --max-prompts 200\n"
                       "  gptrecipe rank runs/speedrun/sft --labeler mypkg.prefs:score          # your function")
    p.add_argument("model", help="checkpoint (or run dir) to sample from")
    p.add_argument("--prompts", default="builtin:chatterbot", help=".txt (one per line), .jsonl or builtin:chatterbot")
    p.add_argument("--out", default="runs/rankings.jsonl", help="rankings JSONL (appended to)")
    p.add_argument("-k", type=int, default=4, help="responses per prompt (4..9 as InstructGPT)")
    p.add_argument("--labeler", default="human",
                   help="human (terminal), builtin:positivity, or package.module:function(prompt, responses)->scores")
    p.add_argument("--max-prompts", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_rank)


def _run_rank(args) -> int:
    from .rank import RankConfig, rank
    from .sample import SamplingConfig

    cfg = RankConfig(model=args.model, prompts=args.prompts, out=args.out, k=args.k, labeler=args.labeler,
                     max_prompts=args.max_prompts,
                     sample=SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                           seed=args.seed))
    out = rank(cfg)
    print(f"rankings: {out}")
    return 0


def _add_rm(sub) -> None:
    p = sub.add_parser("rm", help="train a reward model on rankings, or `rm score CKPT --data F`",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Reward model: the SFT transformer with a scalar head, trained on rankings "
                       "({prompt, responses: [best..worst]} or {prompt, chosen, rejected}).\n\nExamples:\n"
                       "  gptrecipe rm --init runs/speedrun/sft --data rankings.jsonl loss=listwise\n"
                       "  gptrecipe rm score runs/rm --data pairs.jsonl     # {prompt, response} -> reward")
    p.add_argument("--init", help="SFT checkpoint to start from")
    p.add_argument("--data", help="rankings JSONL (train) or {prompt, response} JSONL (score)")
    p.add_argument("--config", help="RM preset (configs/rm/) or TOML path")
    p.add_argument("--resume", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE | score CKPT",
                   help="config overrides; or `score CHECKPOINT` to score --data")
    p.set_defaults(func=_run_rm)


def _run_rm(args) -> int:
    from .rm import load_rm_config, score_file, train_reward_model

    if ckpt := _score_checkpoint(args, "rm", "pairs.jsonl"):
        score_file(ckpt, args.data, out=sys.stdout)
        return 0
    cfg = load_rm_config(args.config, _with_flags(args, "init", "data"))
    result = train_reward_model(cfg, resume=args.resume)
    if result.evals:
        print(f"done: held-out pairwise accuracy {result.evals[-1]['val_accuracy']:.3f}, "
              f"report {cfg.run_dir / 'report.md'}")
    return 0


def _add_ppo(sub) -> None:
    p = sub.add_parser("ppo", help="RLHF: PPO-ptx against a frozen reward model, KL-penalised to the SFT model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="PPO-ptx (InstructGPT). Examples:\n"
                       "  gptrecipe ppo --sft runs/speedrun/sft --rm runs/speedrun/rlhf/round1/rm\n"
                       "  gptrecipe ppo --sft S --rm R beta=0.02 target_kl=6 gamma_ptx=0.5 train.max_steps=200")
    p.add_argument("--sft", help="SFT checkpoint (reference, and policy init)")
    p.add_argument("--rm", help="reward model checkpoint (scorer, and value init)")
    p.add_argument("--config", help="PPO preset (configs/ppo/) or TOML path")
    p.add_argument("--resume", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_run_ppo)


def _run_ppo(args) -> int:
    from .ppo import load_ppo_config, ppo

    cfg = load_ppo_config(args.config, _with_flags(args, "sft", "rm"))
    result = ppo(cfg, resume=args.resume)
    if result.evals:
        first, last = result.evals[0], result.evals[-1]
        print(f"done: held-out RM score {first['val_rm_score']:.3f} -> {last['val_rm_score']:.3f}, "
              f"KL {last['val_kl']:.2f} nats; policy {cfg.run_dir / 'policy'}")
    return 0


def _add_rlhf(sub) -> None:
    p = sub.add_parser("rlhf", help="rank -> rm -> ppo, repeated for --rounds on the current policy",
                       description="Iterated RLHF: each round ranks samples of the current policy, trains a "
                       "reward model and runs PPO from the current policy (reference: the SFT model).")
    p.add_argument("--sft", required=True, help="SFT checkpoint")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--labeler", default="builtin:positivity", help="human | builtin:positivity | module:function")
    p.add_argument("--prompts", default="builtin:chatterbot")
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--rank-prompts", type=int, default=400, help="prompts ranked per round")
    p.add_argument("--out-dir", default="runs/rlhf")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_run_rlhf)


def _run_rlhf(args) -> int:
    from .rlhf import RLHFConfig, run_rlhf

    rows = run_rlhf(RLHFConfig(sft=args.sft, out_dir=args.out_dir, rounds=args.rounds, labeler=args.labeler,
                               prompts=args.prompts, k=args.k, rank_prompts=args.rank_prompts), resume=args.resume)
    for r in rows:
        print(f"round {r['round']}: gold {r['gold_before']:.3f} -> {r['gold_after']:.3f}, "
              f"RM {r['rm_score_before']:.3f} -> {r['rm_score_after']:.3f}, KL {r['kl_after']:.2f}")
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


def _add_sampling_flags(p, temperature: float, max_new_tokens: int) -> None:
    p.add_argument("--temperature", "-t", type=float, default=temperature, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens, help="reply length cap")
    p.add_argument("--seed", type=int, default=None)


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Multi-turn chat with an SFT or PPO checkpoint in the terminal; replies stream "
                       "token by token.\n\nCommands: /reset  forget the conversation; /save FILE  write it as "
                       "JSON {\"messages\": [...]};\n/system TEXT  set the system prompt; /help; /exit. Ctrl-C "
                       "stops a reply; Ctrl-D (or Ctrl-C at the prompt) exits.\n\nExample:\n"
                       "  gptrecipe chat runs/speedrun/sft --system 'You are a helpful assistant.' -t 0.7")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("--system", help="system prompt")
    _add_sampling_flags(p, temperature=0.7, max_new_tokens=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--chat-template", action="store_true",
                   help="use the chat template even if the checkpoint is not an SFT/PPO model")
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> int:
    from .serve.engine import GenParams
    from .serve.served import load_served
    from .serve.terminal import chat

    served = load_served(args.checkpoint, device=args.device, chat=True if args.chat_template else None)
    if not served.chat:
        raise ConfigError(f"{served.checkpoint} is a base model (stage '{served.stage}'): chat needs an SFT or PPO "
                          "checkpoint (or --chat-template to force it); for text continuation use `gptrecipe sample`")
    params = GenParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed)
    return chat(served, params, system=args.system)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible API server and web chat",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve a checkpoint over HTTP: the OpenAI API (GET /v1/models, POST "
                       "/v1/chat/completions,\nPOST /v1/completions with stream, logprobs, echo, n, seed, stop), "
                       "the web chat at /, and\n/tokenizer_info, /tokenize, /detokenize for lm-evaluation-harness. "
                       "Concurrent requests are\ngenerated together (continuous batching). Thumbs and "
                       "regenerate-and-choose in the web chat are\nappended to --feedback as reward-model "
                       "comparisons ({\"prompt\", \"chosen\", \"rejected\"}).\n\nExamples:\n"
                       "  gptrecipe serve runs/speedrun/sft                      # http://127.0.0.1:8000/\n"
                       "  gptrecipe serve runs/speedrun/pretrain --port 8001 --api-key secret\n"
                       "  gptrecipe serve runs/speedrun/sft --export-tokenizer runs/hf_tokenizer   # and exit\n"
                       "  lm_eval --model local-completions --model_args "
                       "base_url=http://127.0.0.1:8000/v1/completions,model=sft,tokenizer_backend=remote ...")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $GPTRECIPE_API_KEY, else none)")
    p.add_argument("--model-name", help="the model's name in the API (default: the run's name)")
    p.add_argument("--feedback", default="runs/feedback/comparisons.jsonl", metavar="FILE",
                   help="where the web chat's comparisons go (default %(default)s; 'none' to record nothing)")
    p.add_argument("--device", default="auto")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true", default=None, help="serve as a chat model whatever its stage")
    mode.add_argument("--base", dest="chat", action="store_false", help="serve as a base model (no chat endpoint)")
    p.add_argument("--max-batch", type=int, default=32, help="most sequences generated together (default %(default)s)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted")
    p.add_argument("--export-tokenizer", metavar="DIR",
                   help="write the tokenizer as a Hugging Face folder (AutoTokenizer.from_pretrained) and exit")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    import os

    if args.export_tokenizer:
        from .serve.hf_tokenizer import export_hf_tokenizer
        from .serve.served import load_served

        served = load_served(args.checkpoint, device="cpu", chat=args.chat)
        out = export_hf_tokenizer(served.tokenizer, args.export_tokenizer, model_max_length=served.block_size,
                                  chat=served.chat)
        print(f"wrote a Hugging Face tokenizer folder to {out}")
        return 0
    from .serve.api import serve

    feedback = None if args.feedback.lower() == "none" else args.feedback
    serve(args.checkpoint, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("GPTRECIPE_API_KEY"),
          model_name=args.model_name, feedback=feedback, device=args.device, chat=args.chat, max_rows=args.max_batch,
          max_tokens_limit=args.max_tokens_limit)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .tokenizer import add_cli as add_tokenizer

    parser = argparse.ArgumentParser(prog="gptrecipe", description="Train, align and talk to your own GPT.",
                                     epilog=STAGES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    add_tokenizer(sub)
    _add_pretrain(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_finetune(sub)
    _add_sft(sub)
    _add_rank(sub)
    _add_rm(sub)
    _add_ppo(sub)
    _add_rlhf(sub)
    _add_run(sub)
    _add_chat(sub)
    _add_serve(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may come after positionals (`gptrecipe eval CKPT --name x a=1`): a stage without sub-commands
    parses its arguments intermixed."""
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in stages:
        try:
            args = stages[argv[0]].parse_intermixed_args(argv[1:])
        except TypeError:  # a stage with sub-commands (tokenizer): argparse's ordinary rules
            return parser.parse_args(argv)
        args.stage = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
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
