"""`gptrecipe <stage> ...`: a thin command line over the library; each stage is also a Python function.

A stage's module is imported when its command runs (not for a cycle: so that `--help` and light commands
start without loading every stage and its dependencies)."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .evaluate.openai_backend import EndpointError
from .sample import PromptTooLongError
from .tokenizer import TokenizerError

# a stage's known failures: printed as one line `gptrecipe STAGE: error: ...` (exit 2), not a traceback
KNOWN_ERRORS = (ConfigError, CheckpointError, DataError, TokenizerError, PromptTooLongError, FileNotFoundError,
                EndpointError)

CONFIG_HELP = """Config: presets under configs/ (pretrain: --config NAME, models: --model NAME); override any field
with KEY=VALUE, e.g. `gptrecipe pretrain --config tiny train.max_steps=500 model.n_layer=2`; `gptrecipe run`
takes STAGE.KEY=VALUE for its other stages, e.g. `sft.train.max_steps=50 ppo.beta=0.02`.
"""


def _parser(sub, name: str, help: str, run, description: str) -> argparse.ArgumentParser:
    """A stage's sub-command: `help` in the list of stages, `description` laid out as written, `run(args)`."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)
    return p


def _done(result, cfg, line: str) -> None:
    """A training stage's last line, when it evaluated at all: `line` formatted with `first` and `last` (its
    first and last evals), `r` (the result) and `cfg` (its config)."""
    if result.evals:
        print(line.format(first=result.evals[0], last=result.evals[-1], r=result, cfg=cfg))


def _add_pretrain(sub) -> None:
    p = _parser(sub, "pretrain", "pretrain a GPT on a weighted text mixture (next-token prediction)", _run_pretrain,
                "Pretrain a GPT (next-token prediction) on a weighted mixture of corpora.\n\n"
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


def _run_pretrain(args) -> int:
    from .config import dump_toml
    from .pretrain import load_pretrain_config, pretrain

    paths, overrides = _split_paths(args.data, args.overrides)
    cfg = load_pretrain_config(args.config, overrides, model=args.model, data_paths=paths)
    if args.print_config:
        print(dump_toml(cfg), end="")
        return 0
    _done(pretrain(cfg, resume=args.resume), cfg,
          "done: step {r.final_step}, val loss {last[val_loss]:.4f}, report {cfg.run_dir}/report.md")
    return 0


def _split_paths(paths: list[str] | None, overrides: list[str]) -> tuple[list[str] | None, list[str]]:
    """`--data a.txt dir/ train.lr=1e-3`: argparse gives the KEY=VALUE words to --data; hand them back."""
    if not paths:
        return paths, overrides
    keep = [p for p in paths if "=" not in p or Path(p).exists()]
    return keep, [p for p in paths if p not in keep] + list(overrides)


def _add_sampling_flags(p, temperature: float, max_new_tokens: int) -> None:
    p.add_argument("--temperature", "-t", type=float, default=temperature, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens,
                   help="most tokens generated (default %(default)s)")
    p.add_argument("--seed", type=int, default=None)


DTYPE_HELP = ("the weights' precision: auto (default) = bf16 where the hardware computes it natively (GPUs, CPUs "
              "with AVX512-BF16/AMX; half the bytes per token), else fp32; or fp32, bf16, fp16")


def _add_sample(sub) -> None:
    p = _parser(sub, "sample", "sample from a checkpoint (temperature, top-k, top-p, stop strings, streaming; "
                "--assistant)", _run_sample, "Sample from a checkpoint. The prompt comes from --prompt or stdin.")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("--prompt", "-p", help="prompt text (default: read stdin if piped, else a newline)")
    _add_sampling_flags(p, temperature=0.8, max_new_tokens=200)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--num-samples", type=int, default=1, help="samples drawn as one batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile'd step with a static KV cache: 1.8-2.5x the tokens/s on "
                   "CPU, but compiling takes 20-60 s per batch size and cache length the first time (its GEMMs are "
                   "autotuned; inductor caches it on disk): "
                   "worth it for long or repeated generation, not one short sample (default: eager)")
    p.add_argument("--assistant", action="store_true",
                   help="frame the prompt as the next turn of a transcript between a human and a helpful AI "
                   "assistant (a base model prompted to act as an assistant); stops before the next 'Human:'")
    _add_tool_flags(p, "answer the prompt as a user turn of the chat format with LaMDA's toolset loop (an SFT "
                    "model trained with tool conversations): each call and its result is shown, then the answer")


def _add_tool_flags(p, help: str) -> None:
    p.add_argument("--tools", action="store_true", help=help)
    p.add_argument("--tool-docs", nargs="+", metavar="PATH", default=[],
                   help="with --tools: retrieval over these text files / folders instead of the embedded corpora")
    p.add_argument("--tool-dictionary", metavar="TSV", help="with --tools: the translator's 'chinese<TAB>english' file")
    p.add_argument("--max-calls", type=int, default=3, help="with --tools: calls per turn before the model must "
                   "answer (default %(default)s)")


def _show_call(file):
    def show(row: int, query: str, result: str) -> None:
        if row == 0:
            file.write(f"[TS, {query}]\n[toolset: {result}]\n")
            file.flush()
    return show


def _run_sample(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .runtime import pick_device
    from .sample import SamplingConfig, stream_to_terminal

    prompt = args.prompt
    if prompt is None:
        prompt = sys.stdin.read() if not sys.stdin.isatty() else "\n"
    loaded = load_checkpoint(args.checkpoint, pick_device(args.device), dtype=args.dtype)
    model, tok = loaded.model.eval(), loaded.tokenizer
    stop = list(args.stop)
    if args.assistant:
        from .evaluate.prompts import ASSISTANT_STOP, assistant_prompt

        prompt, stop = assistant_prompt(prompt), [*stop, ASSISTANT_STOP]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop=stop, num_samples=args.num_samples)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.tools:
        from .chat import Message
        from .tool_use import answer_with_tools, chat_toolset

        toolset = chat_toolset(args.tool_docs, args.tool_dictionary)
        sys.stdout.write(f"User: {prompt}\n")

        def show(row: int, piece: str) -> None:
            if row == 0:
                sys.stdout.write(piece)
                sys.stdout.flush()

        turns = answer_with_tools(model, tok, [[Message("user", prompt)]] * args.num_samples, cfg, toolset,
                                  max_calls=args.max_calls, on_text=show, on_call=_show_call(sys.stdout))
        sys.stdout.write("\n" + ("(call cap reached)\n" if turns[0].capped else ""))
        for i, t in enumerate(turns[1:], start=2):
            calls = "".join(f"[TS, {q}]\n[toolset: {r}]\n" for q, r in t.calls)
            sys.stdout.write(f"\n--- sample {i} ---\n{calls}{t.text}\n")
        return 0
    sys.stdout.write(prompt)
    stream_to_terminal(model, tok, prompt, cfg, compile=args.compile)
    return 0


def _add_eval(sub) -> None:
    p = _parser(sub, "eval", "in-context accuracy vs K (zero / one / few-shot) on JSONL or builtin tasks; loss, "
                "perplexity, bits/byte", _run_eval,
                "Evaluate a checkpoint (or a model behind an OpenAI-compatible endpoint): accuracy of in-context\n"
                "learning for each K (prompts as GPT-3: description, K solved examples, the query), and loss,\n"
                "perplexity and bits per byte on corpora. Writes runs/NAME/report.md, icl.png and results.json.\n\n"
                "Task JSONL: an optional header line {\"description\", \"example_format\": \"{input} -> "
                "{output}\", \"separator\"},\nthen items {\"input\", \"target\"} or {\"input\", "
                "\"choices\": [...], \"answer\": i}, \"split\": \"train\" for solved examples.\n\n"
                "Examples:\n  gptrecipe eval runs/speedrun/pretrain --tasks builtin:synthetic -k 0 1 8\n"
                "  gptrecipe eval runs/speedrun/pretrain --tasks my_task.jsonl builtin:translate-zh-en "
                "--corpus builtin:shakespeare\n"
                "  gptrecipe eval --base-url http://localhost:8000/v1 --api-model my-model --tasks my_task.jsonl")
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
    given = {"model": ckpt or args.api_model, "base_url": args.base_url, "name": args.name,
             "tasks": tasks and json.dumps(tasks), "corpora": corpora and json.dumps(corpora),
             "ks": args.shots and json.dumps(args.shots)}
    flags = [f"{k}={v}" for k, v in given.items() if v] + (["tasks=[]"] if corpora and not tasks else [])
    result = run_eval(load_eval_config(args.config, flags + overrides))
    print(f"report: {result.report}")
    return 0


def _add_ape(sub) -> None:
    p = _parser(sub, "ape", "automatic prompt engineering (APE; OPRO): a model writes instructions for a task, "
                "the best is kept", _run_ape,
                "The Automatic Prompt Engineer (Zhou et al. 2022): a proposer model reads solved train examples\n"
                "of a task (a fresh random subset per query) and writes candidate instructions (\"... The\n"
                "instruction was to\"); a scorer model runs each zero-shot on other train items (execution\n"
                "accuracy, or the mean log-probability of the right output), spending evaluations by adaptive\n"
                "filtering (or a UCB bandit). OPRO (--strategy opro / both) instead asks, step by step, for a\n"
                "better instruction than the earlier ones with their scores. The winner's accuracy on the test\n"
                "split (never used for selection) is reported next to no instruction and the task's description,\n"
                "per task and seed. Proposer and scorer: a checkpoint, or any OpenAI-compatible /v1/completions\n"
                "endpoint (gptrecipe serve, vLLM, llama.cpp, OpenAI; key from $OPENAI_API_KEY, see --api-key-env);\n"
                "log-prob scoring on an endpoint needs echo + logprobs. Writes runs/NAME/report.md, results.json\n"
                "and ape.png (score against evaluations spent).\n\n"
                "Tasks: the JSONL task format of `gptrecipe eval` (items with \"split\": \"train\" are the\n"
                "demonstrations and scoring items) or builtin:synthetic/FAMILY.\n\n"
                "Examples:\n  gptrecipe ape --config tiny --proposer runs/speedrun/pretrain   # the main job's model\n"
                "  gptrecipe ape --task my_task.jsonl --proposer-base-url http://localhost:8000/v1 --proposer gpt-x\n"
                "  gptrecipe ape --task my_task.jsonl --proposer big-model --proposer-base-url URL "
                "--scorer runs/sft --strategy both")
    p.add_argument("--task", nargs="+", metavar="TASK",
                   help="task .jsonl files / directories, builtin:synthetic/FAMILY")
    p.add_argument("--proposer", help="checkpoint or run dir (or, with --proposer-base-url, the model name there)")
    p.add_argument("--proposer-base-url", help="the proposer's OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    p.add_argument("--scorer", help="checkpoint or run dir, or the model name at --scorer-base-url (default: the "
                   "proposer)")
    p.add_argument("--scorer-base-url", help="the scorer's OpenAI-compatible endpoint")
    p.add_argument("--api-key-env", help="environment variable with the endpoints' API key (default OPENAI_API_KEY)")
    p.add_argument("--strategy", choices=["ape", "opro", "both"], help="APE's proposals (default), OPRO's "
                   "meta-prompt steps, or both on APE's evaluation budget")
    p.add_argument("--search", choices=["filter", "ucb", "all"], help="adaptive filtering (default), a UCB bandit, "
                   "or every candidate on every scoring item")
    p.add_argument("--metric", choices=["accuracy", "logprob"], help="execution accuracy (default) or the mean "
                   "log-probability of the right output")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="one run per task and seed (default 0)")
    p.add_argument("--name", help="output under runs/NAME (default: ape)")
    p.add_argument("--config", help="ape preset (configs/ape/, e.g. tiny: the main job's model) or TOML path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. subsets=8 per_subset=4 mc_rounds=1 synthetic.tasks_per_family=2")


def _run_ape(args) -> int:
    import json

    from .ape import ape, load_ape_config

    tasks, overrides = _split_paths(args.task, list(args.overrides))
    given = {"tasks": tasks and json.dumps(tasks), "proposer.model": args.proposer,
             "proposer.base_url": args.proposer_base_url, "scorer.model": args.scorer,
             "scorer.base_url": args.scorer_base_url, "proposer.api_key_env": args.api_key_env,
             "scorer.api_key_env": args.api_key_env, "strategy": args.strategy, "search": args.search,
             "metric": args.metric, "seeds": args.seeds and json.dumps(args.seeds), "name": args.name}
    result = ape(load_ape_config(args.config, [f"{k}={v}" for k, v in given.items() if v] + overrides))
    for row in result.summary:
        print(f"{row['condition']}: test accuracy {row['test accuracy (mean)']:.3f} +- {row['std']:.3f} "
              f"over {row['runs']} runs" + (f", {row['evaluations (mean)']:.0f} evaluations" if row[
                  'evaluations (mean)'] else ""))
    print(f"report: {result.report} ({result.seconds:.1f} s)")
    return 0


@dataclass(frozen=True)
class _Trainer:
    """A training stage: `gptrecipe NAME --FLAG ... [--config PRESET] [--resume] [KEY=VALUE ...]` runs
    NAME.TRAIN(NAME.load_NAME_config(PRESET, the overrides and FLAG=VALUE for each flag given)); with
    `score_data`, `gptrecipe NAME score CHECKPOINT --data FILE` runs NAME.score_file instead."""

    name: str
    help: str
    description: str
    flags: dict[str, dict[str, Any]]  # --FLAG: add_argument's keywords
    preset: str  # what --config names, for its help
    example: str  # overrides, for the help
    train: str
    done: str  # the last line (see _done)
    score_data: str = ""  # the --data file in the usage line of `score`
    score_done: str = ""  # the line after the scores, formatted with what score_file returns

    def add(self, sub) -> None:
        p = _parser(sub, self.name, self.help, self.run, self.description)
        for flag, kw in self.flags.items():
            p.add_argument(f"--{flag.replace('_', '-')}", **kw)
        p.add_argument("--config", help=f"{self.preset} preset (configs/{self.name}/) or TOML path")
        p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
        scores = "; or `score CHECKPOINT` to score --data" if self.score_data else ""
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE | score CKPT" if scores else "KEY=VALUE",
                       help=f"config overrides, e.g. {self.example}{scores}")

    def run(self, args) -> int:
        stage = importlib.import_module(f".{self.name}", __package__)
        if self.score_data and args.overrides[:1] == ["score"]:
            if len(args.overrides) != 2 or not args.data:
                raise ConfigError(f"usage: gptrecipe {self.name} score CHECKPOINT --data {self.score_data}")
            score = stage.score_file(args.overrides[1], args.data, out=sys.stdout)
            if self.score_done:
                print(self.score_done.format(score))
            return 0
        overrides = list(args.overrides) + [f"{n}={getattr(args, n)}" for n in self.flags if getattr(args, n)]
        cfg = getattr(stage, f"load_{self.name}_config")(args.config, overrides)
        _done(getattr(stage, self.train)(cfg, resume=args.resume), cfg, self.done)
        return 0


FINETUNE = _Trainer(
    "finetune", help="GPT-1 fine-tuning: a task head on the extract token (classification, entailment, ...)",
    description="GPT-1 style supervised fine-tuning: a linear head on the final hidden state of an extract token,\n"
    "loss L2 + lambda * L1 (task + auxiliary language-model loss, lm_coef=0.5).\n\nData (JSONL), by --task:\n"
    "  classification   {\"text\", \"label\"}\n"
    "  entailment       {\"premise\", \"hypothesis\", \"label\"}\n"
    "  similarity       {\"text_a\", \"text_b\", \"label\"}   (both orders, hidden states added)\n"
    "  multiple_choice  {\"context\", \"choices\": [...], \"answer\": i}\n\nExamples:\n"
    "  gptrecipe finetune --init runs/speedrun/pretrain --task entailment --data nli.jsonl --val-data nli_val.jsonl\n"
    "  gptrecipe finetune score runs/finetune --data test.jsonl     # predictions and accuracy",
    flags={"init": dict(help="pretrained checkpoint or run dir to start from"),
           "task": dict(choices=["classification", "entailment", "similarity", "multiple_choice"]),
           "data": dict(help="training JSONL (or, with `score`, the JSONL to predict)"),
           "val_data": dict(help="validation JSONL (default: hold out val_fraction of --data)")},
    preset="finetune", example="lm_coef=0.5 train.max_steps=500", train="finetune",
    done="done: step {r.final_step}, val accuracy {last[val_accuracy]:.4f}, report {cfg.run_dir}/report.md",
    score_data="examples.jsonl", score_done="accuracy {:.4f}")
SFT = _Trainer(
    "sft", help="supervised fine-tuning for chat on conversations (loss on the assistant's tokens)",
    description="Fine-tune a pretrained checkpoint on conversations.\n\n"
    "Data: JSONL of {\"messages\": [{\"role\", \"content\"}, ...]} or {\"prompt\", \"response\"},\n"
    "or builtin:chatterbot. Example:\n"
    "  gptrecipe sft --init runs/speedrun/pretrain --data chats.jsonl train.max_steps=500",
    flags={"init": dict(help="pretrained checkpoint or run dir to start from"),
           "data": dict(help="conversations JSONL or builtin:chatterbot")},
    preset="SFT", example="train.lr=3e-4", train="sft",
    done="done: step {r.final_step}, val loss {last[val_loss]:.4f}, report {cfg.run_dir}/report.md")
RM = _Trainer(
    "rm", help="reward model on rankings (pairwise or listwise loss); `rm score` scores responses",
    description="Reward model: the SFT transformer with a scalar head, trained on rankings "
    "({prompt, responses: [best..worst]} or {prompt, chosen, rejected}).\n\nExamples:\n"
    "  gptrecipe rm --init runs/speedrun/sft --data rankings.jsonl loss=listwise\n"
    "  gptrecipe rm score runs/rm --data pairs.jsonl     # {prompt, response} -> reward",
    flags={"init": dict(help="SFT checkpoint to start from"),
           "data": dict(help="rankings JSONL (train) or {prompt, response} JSONL (score)")},
    preset="RM", example="loss=listwise", train="train_reward_model",
    done="done: held-out pairwise accuracy {last[val_accuracy]:.3f}, report {cfg.run_dir}/report.md",
    score_data="pairs.jsonl")
PPO = _Trainer(
    "ppo", help="RLHF with PPO-ptx against the reward model, KL-penalised to the SFT model",
    description="PPO-ptx (InstructGPT). Examples:\n"
    "  gptrecipe ppo --sft runs/speedrun/sft --rm runs/speedrun/rlhf/round1/rm\n"
    "  gptrecipe ppo --sft S --rm R beta=0.02 target_kl=6 gamma_ptx=0.5 train.max_steps=200",
    flags={"sft": dict(help="SFT checkpoint (reference, and policy init)"),
           "rm": dict(help="reward model checkpoint (scorer, and value init)")},
    preset="PPO", example="beta=0.02 target_kl=6", train="ppo",
    done="done: held-out RM score {first[val_rm_score]:.3f} -> {last[val_rm_score]:.3f}, KL {last[val_kl]:.2f} "
    "nats; policy {cfg.run_dir}/policy")


def _add_rank(sub) -> None:
    p = _parser(sub, "rank", "comparison data: sample K responses per prompt, ranked by you or by a labeler", _run_rank,
                "Comparison data for the reward model: for each prompt, sample K responses from a model and rank "
                "them best to worst.\nEvery ranked prompt is saved at once; run again to resume.\n\nExamples:\n"
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


def _run_rank(args) -> int:
    from .compare import CompareConfig, compare
    from .sample import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    out = compare(CompareConfig(model=args.model, prompts=args.prompts, out=args.out, k=args.k, labeler=args.labeler,
                                max_prompts=args.max_prompts, sample=sampling))
    print(f"rankings: {out}")
    return 0


def _add_rlhf(sub) -> None:
    p = _parser(sub, "rlhf", "rank -> rm -> ppo for --rounds, each round on the current policy", _run_rlhf,
                "Iterated RLHF: each round ranks samples of the current policy, trains a reward model and runs PPO\n"
                "from the current policy (reference: the SFT model).")
    p.add_argument("--sft", required=True, help="SFT checkpoint")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--labeler", default="builtin:positivity", help="human | builtin:positivity | module:function")
    p.add_argument("--prompts", default="builtin:chatterbot")
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--rank-prompts", type=int, default=400, help="prompts ranked per round")
    p.add_argument("--out-dir", default="runs/rlhf")
    p.add_argument("--resume", action="store_true")


def _run_rlhf(args) -> int:
    from .rlhf import RLHFConfig, run_rlhf

    rows = run_rlhf(RLHFConfig(sft=args.sft, out_dir=args.out_dir, rounds=args.rounds, labeler=args.labeler,
                               prompts=args.prompts, k=args.k, rank_prompts=args.rank_prompts), resume=args.resume)
    for r in rows:
        print(f"round {r['round']}: gold {r['gold_before']:.3f} -> {r['gold_after']:.3f}, "
              f"RM {r['rm_score_before']:.3f} -> {r['rm_score_after']:.3f}, KL {r['kl_after']:.2f}")
    return 0


def _add_run(sub) -> None:
    p = _parser(sub, "run", "the main job: tokenizer, pretrain, in-context eval, APE, SFT, rank, RM, PPO; one "
                "run report",
                _run_pipeline,
                "The main job, on the default mixture (Shakespeare, King James Bible, chatterbot dialogues, "
                "builtin:icl)\nor --data: train a tokenizer, predict the pretraining run's loss from small runs of "
                "its recipe,\npretrain a tiny GPT, measure its in-context learning (accuracy vs K) and bits per byte,\n"
                "let it write and pick instructions for held-out tasks (APE), fine-tune it for chat and tool use\n"
                "(SFT), rank its replies with a simulated labeler, train a reward model, run PPO, and write\n"
                "OUT_DIR/NAME/report.md. About 10 minutes on 2 CPU cores. When the SFT mixes in tool-use\n"
                "conversations (sft.tool_conversations=N), the SFT model last answers held-out tool-use questions\n"
                "with LaMDA's toolset and without it.\n\n"
                "KEY=VALUE overrides the pretraining config; STAGE.KEY=VALUE that stage's config, for STAGE\n"
                "in scale (runs, lo, hi: the scaling sweep), eval, ape (ape.seeds=[] skips it), sft, rm, ppo\n"
                "(and pretrain). Example:\n"
                "  gptrecipe run --name quick train.max_steps=200 sft.train.max_steps=50 rm.loss=listwise "
                "ppo.beta=0.02")
    p.add_argument("--config", default="tiny", help="pretrain preset for the pretraining stage")
    p.add_argument("--sft-config", default="tiny", help="SFT preset (configs/sft/) or TOML path")
    p.add_argument("--data", nargs="+", metavar="PATH", help="your own corpora instead of the default mixture")
    p.add_argument("--name", default="speedrun", help="run name (output under OUT_DIR/NAME)")
    p.add_argument("--out-dir", default="runs", help="where runs go (default %(default)s)")
    p.add_argument("--rank-prompts", type=int, default=300, help="prompts ranked by the simulated labeler")
    p.add_argument("--tool-questions", type=int, default=150,
                   help="held-out tool-use questions the SFT model answers with and without the toolset (default "
                   "%(default)s; the SFT preset's tool_conversations trains tool use; 0 = no tool-use stage)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted run")
    p.add_argument("overrides", nargs="*", metavar="[STAGE.]KEY=VALUE",
                   help="config overrides, e.g. train.lr=1e-3 (pretraining) sft.train.max_steps=50 ppo.beta=0.02")


def _run_pipeline(args) -> int:
    from .pipeline import PipelineConfig, run_pipeline, split_overrides

    paths, overrides = _split_paths(args.data, args.overrides)
    report = run_pipeline(PipelineConfig(preset=args.config, sft_preset=args.sft_config, data_paths=paths,
                                         name=args.name, out_dir=args.out_dir, rank_prompts=args.rank_prompts,
                                         tool_questions=args.tool_questions, resume=args.resume,
                                         **split_overrides(overrides)))
    print(Path(report).read_text())
    print(f"report: {report}")
    return 0


def _add_chat(sub) -> None:
    p = _parser(sub, "chat", "talk to a chat model in the terminal (streaming, /reset, /save FILE, /system)", _run_chat,
                "Multi-turn chat with an SFT or PPO checkpoint in the terminal; replies stream token by token.\n\n"
                "Commands: /reset  forget the conversation; /save FILE  write it as JSON {\"messages\": [...]};\n"
                "/system TEXT  set the system prompt; /help; /exit. Ctrl-C stops a reply; Ctrl-D (or Ctrl-C at "
                "the prompt) exits.\n\nExample:\n"
                "  gptrecipe chat runs/speedrun/sft --system 'You are a helpful assistant.' -t 0.7")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("--system", help="system prompt")
    _add_sampling_flags(p, temperature=0.7, max_new_tokens=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--chat-template", action="store_true",
                   help="use the chat template even if the checkpoint is not an SFT/PPO model")
    _add_tool_flags(p, "LaMDA's toolset loop: the model may query the toolset (calculator, translator, retrieval) "
                    "before it answers; each call and its result is shown")


def _run_chat(args) -> int:
    from .serve.engine import GenParams, leave_threads_to_engine
    from .serve.served import load_served
    from .serve.terminal import chat

    threads = leave_threads_to_engine()
    served = load_served(args.checkpoint, device=args.device, dtype=args.dtype,
                         chat=True if args.chat_template else None)
    if not served.chat:
        raise ConfigError(f"{served.checkpoint} is a base model (stage '{served.stage}'): chat needs an SFT or PPO "
                          "checkpoint (or --chat-template to force it); for text continuation use `gptrecipe sample`")
    params = GenParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed)
    toolset = None
    if args.tools:
        from .tool_use import chat_toolset

        toolset = chat_toolset(args.tool_docs, args.tool_dictionary)
    return chat(served, params, system=args.system, toolset=toolset, max_calls=args.max_calls, threads=threads)


def _add_serve(sub) -> None:
    p = _parser(sub, "serve", "OpenAI-compatible API server (chat, completions, streaming) + web chat with feedback",
                _run_serve,
                "Serve a checkpoint over HTTP: the OpenAI API (GET /v1/models, POST /v1/chat/completions,\n"
                "POST /v1/completions with stream, logprobs, echo, n, seed, stop), the web chat at /, and\n"
                "/tokenizer_info, /tokenize, /detokenize for lm-evaluation-harness. Concurrent requests are\n"
                "generated together (continuous batching). Thumbs and regenerate-and-choose in the web chat are\n"
                "appended to --feedback as reward-model comparisons ({\"prompt\", \"chosen\", \"rejected\"}).\n\n"
                "Examples:\n"
                "  gptrecipe serve runs/speedrun/sft                      # http://127.0.0.1:8000/\n"
                "  gptrecipe serve runs/speedrun/sft --tools builtin      # answers through LaMDA's toolset\n"
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
    p.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    p.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile'd step over a static KV cache (one graph for every batch "
                   "size and cache length, its GEMMs autotuned), compiled before the server accepts requests: about "
                   "a minute on a 2-core CPU the first time, less once inductor has cached it on disk; then "
                   "1.2-1.7x the eager server's tokens/s with 8-32 clients on a 2-core Zen 3 (bench/RESULTS.md) "
                   "(default: eager, which starts at once)")
    p.add_argument("--tools", choices=["client", "builtin"], default="client",
                   help="client (default): OpenAI tool calling, the client runs the tools (the builtin toolset is "
                   "the function 'toolset' in the model card); builtin: the server runs LaMDA's toolset loop itself "
                   "and returns only the final answer")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true", default=None, help="serve as a chat model whatever its stage")
    mode.add_argument("--base", dest="chat", action="store_false", help="serve as a base model (no chat endpoint)")
    p.add_argument("--max-batch", type=int, default=32, help="most sequences generated together (default %(default)s)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted")
    p.add_argument("--export-tokenizer", metavar="DIR",
                   help="write the tokenizer as a Hugging Face folder (AutoTokenizer.from_pretrained) and exit")


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
    from .serve.engine import leave_threads_to_engine

    threads = leave_threads_to_engine()
    feedback = None if args.feedback.lower() == "none" else args.feedback
    toolset = None
    if args.tools == "builtin":
        from .tool_use import chat_toolset

        toolset = chat_toolset()
    serve(args.checkpoint, toolset=toolset,
          host=args.host, port=args.port, api_key=args.api_key or os.environ.get("GPTRECIPE_API_KEY"),
          model_name=args.model_name, feedback=feedback, device=args.device, dtype=args.dtype, chat=args.chat,
          max_rows=args.max_batch, compile=args.compile, max_tokens_limit=args.max_tokens_limit, threads=threads)
    return 0


def _add_scale(sub) -> None:
    p = sub.add_parser("scale", help="predictable scaling (GPT-4): fit small runs' losses, predict a bigger run's",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Predictable scaling, as GPT-4 predicted its final loss from runs with 1/10,000 of "
                       "its compute.\n\nExamples:\n"
                       "  gptrecipe scale sweep --config tiny --compute 1.3e11 3.8e12 --runs 5   # -> runs/sweep\n"
                       "  gptrecipe scale predict runs/sweep   # register, then train the recipe's own run, compare\n"
                       "  gptrecipe scale fit runs.jsonl --predict 1e17\n"
                       "  gptrecipe scale fit runs.jsonl --predict 1e17 --json --plot fit.png")
    scale = p.add_subparsers(dest="scale_command", metavar="COMMAND", required=True)
    f = scale.add_parser("fit", help="fit L(C) = a C^b + c (and L(N, D)) to runs; predict the loss at COMPUTE",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Fit L(C) = a * C^b + c (b < 0, 0 <= c < min L; Huber loss on log residuals "
                         "from a grid of starts)\nwith a bootstrap interval over the runs, and, when every run has "
                         "`params` and `tokens`,\nChinchilla's L(N, D) = E + A / N^alpha + B / D^beta (Epoch AI's "
                         "fit).\n\nRUNS: JSONL, one run per line: {'compute': FLOPs, 'loss': held-out loss, "
                         "'params': N, 'tokens': D}.")
    f.add_argument("runs", help="runs JSONL file")
    f.add_argument("--predict", type=float, required=True, metavar="COMPUTE", help="compute to predict the loss at")
    f.add_argument("--json", action="store_true", help="print one JSON object (a, b, c, prediction, interval, ...)")
    f.add_argument("--level", type=float, default=0.9, help="bootstrap interval level (default %(default)s)")
    f.add_argument("--plot", metavar="PNG", help="also draw the runs, the fit and the interval (log-log)")
    f.set_defaults(func=_run_scale_fit)
    w = scale.add_parser("sweep", help="train small runs of one recipe, log-spaced in compute (resumable)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Train a family of small models under one recipe (a pretraining preset: its data "
                         "mixture,\ntokenizer, optimizer, context and warmup + cosine shape): the base model "
                         "at other widths\n(depth and heads kept), each trained for the base run's tokens per "
                         "parameter with its own full\n"
                         "schedule and a batch ~ its compute^0.33 (--batch-exponent).\n"
                         "Each run's held-out loss and bits per byte go to OUT_DIR/NAME/runs.jsonl (for `scale fit`)."
                         "\nRun it again to continue a killed sweep.")
    w.add_argument("--config", default="tiny", help="pretrain preset of the recipe (default %(default)s)")
    w.add_argument("--data", nargs="+", metavar="PATH", help="your own corpora instead of the preset's mixture")
    w.add_argument("--compute", nargs=2, type=float, required=True, metavar=("LO", "HI"),
                   help="training FLOPs of the smallest and largest run (--dry-run shows the family)")
    w.add_argument("--runs", type=int, default=5, help="runs, log-spaced in compute (default %(default)s)")
    w.add_argument("--name", default="sweep", help="output under OUT_DIR/NAME (default %(default)s)")
    w.add_argument("--out-dir", default="runs")
    w.add_argument("--batch-exponent", type=float, metavar="E",
                   help="rows per step of each run = the recipe's batch x (run compute / recipe run compute)^E, so "
                        "small runs take more, smaller steps (DeepSeek LLM: B_opt ~ C^0.33; default 0.33; "
                        "0: the recipe's batch for every run)")
    w.add_argument("--seeds", type=int, metavar="K",
                   help="train every run below the largest with K seeds (NAME-s1, ...); the fit takes the median "
                        "loss per compute (default 1; short runs leave the early plateau at seed-dependent times)")
    w.add_argument("--capability", action="store_true",
                   help="also sample generative problems at temperature 1 (GPT-4's capability prediction)")
    w.add_argument("--dry-run", action="store_true", help="print the plan and the recipe's own run, train nothing")
    w.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="pretraining overrides of the recipe")
    w.set_defaults(func=_run_scale_sweep)
    r = scale.add_parser("predict", help="register a prediction for a target run, train it, compare",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Fit the sweep's runs and register the predicted held-out loss of the target "
                         "(SWEEP/NAME/prediction.json:\nfit, interval, code version, time; a registered prediction "
                         "is never replaced), then train the\ntarget with the same recipe and write the comparison "
                         "(comparison.json, scaling.png, scaling.md).")
    r.add_argument("sweep", help="the sweep's folder (OUT_DIR/NAME of `scale sweep`)")
    r.add_argument("--compute", type=float, help="target compute in FLOPs (default: the recipe's own run)")
    r.add_argument("--name", default="target", help="the target run's name under the sweep (default %(default)s)")
    r.set_defaults(func=_run_scale_predict)


def _run_scale_fit(args) -> int:
    import json

    from .scaling import fit_runs, plot_fit, read_runs

    runs = read_runs(args.runs)
    out = fit_runs(runs, args.predict, level=args.level)
    if args.plot:
        plot_fit(runs, out, args.plot)
    if args.json:
        print(json.dumps(out))
        return 0
    lo, hi = out["interval"]
    print(f"L(C) = {out['a']:.4g} * C^{out['b']:.4f} + {out['c']:.4f}   ({out['runs']} runs, largest residual "
          f"{max(abs(r) for r in out['residuals']):.2%})")
    print(f"prediction at C = {args.predict:.3g} ({out['extrapolation']:.3g}x the largest run): {out['prediction']:.4f}"
          f", {100 * args.level:.0f}% interval [{lo:.4f}, {hi:.4f}]")
    if "chinchilla" in out:
        ch = out["chinchilla"]
        print(f"L(N, D) = {ch['E']:.4f} + {ch['A']:.4g} / N^{ch['alpha']:.4f} + {ch['B']:.4g} / D^{ch['beta']:.4f}")
    return 0


def _add_toolset(sub) -> None:
    p = _parser(sub, "toolset", "LaMDA's toolset (calculator, translator, retrieval) on one query", _run_toolset,
                "Run a query through LaMDA's toolset: every tool tries it, and their results come in the order\n"
                "calculator, translator, retrieval (a tool that cannot parse the query adds nothing).\n\n"
                "  calculator  arithmetic on numbers (+ - * / // % ** ^ parentheses), parsed, never evaluated as\n"
                "              code; too large or too slow is refused\n"
                "  translator  Chinese <-> English words and phrases (CC-CEDICT, or --dictionary TSV): a query with\n"
                "              Chinese characters, or 'translate cat to Chinese', 'the Chinese word for cat'\n"
                "  retrieval   BM25 snippets [source #passage] from the embedded corpora (or --docs FILES), the\n"
                "              index built once and cached\n\n"
                "Examples:\n  gptrecipe toolset \"37 * 12\" --json\n  gptrecipe toolset \"translate 猫\"\n"
                "  gptrecipe toolset \"Who killed Abel?\"\n  gptrecipe toolset \"refund policy\" --docs my_notes/")
    p.add_argument("query")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"tool", "result"} objects')
    p.add_argument("--docs", nargs="+", metavar="PATH", default=[],
                   help="retrieve from these text files or folders (.txt/.md) instead of the embedded corpora")
    p.add_argument("--dictionary", metavar="TSV", help="the translator's dictionary: 'chinese<TAB>english' lines")


def _run_toolset(args) -> int:
    import json

    from .tools import Toolset

    results = Toolset.default(docs=args.docs, dictionary=args.dictionary)(args.query)
    if args.json:
        print(json.dumps([r.to_json() for r in results], ensure_ascii=False))
    else:
        for r in results:
            print(f"{r.tool}: {r.result}")
        if not results:
            print("(no tool could parse the query)")
    return 0


def _add_export(sub) -> None:
    p = _parser(sub, "export", "write a checkpoint as a Hugging Face GPT-2 folder (transformers, vLLM, llama.cpp)",
                _run_export,
                "Write a GPT checkpoint (pretrain, sft, ppo policy) as a GPT2LMHeadModel folder: config.json,\n"
                "model.safetensors, tokenizer.json + tokenizer_config.json (with the chat template for chat models),\n"
                "generation_config.json. Sparse attention layers and reward / task heads cannot be expressed.\n\n"
                "Examples:\n  gptrecipe export runs/speedrun/sft hf/sft\n"
                "  vllm serve hf/sft      # or transformers: pipeline(\"text-generation\", \"hf/sft\")")
    p.add_argument("checkpoint", help="checkpoint dir, or a run dir (uses its latest checkpoint)")
    p.add_argument("out", help="the folder to write (replaced if it exists)")


def _run_export(args) -> int:
    from .interop import export_hf

    print(f"wrote a GPT2LMHeadModel folder to {export_hf(args.checkpoint, args.out)}")
    return 0


def _add_import(sub) -> None:
    p = _parser(sub, "import", "turn a local Hugging Face GPT-2 folder into a checkpoint every stage starts from",
                _run_import,
                "Read a local GPT2LMHeadModel folder (model.safetensors or pytorch_model.bin, tokenizer.json or\n"
                "vocab.json + merges.txt) into a run dir OUT holding one checkpoint. The chat special tokens the\n"
                "vocabulary lacks are appended (embeddings: the mean embedding plus small seeded noise).\n\n"
                "Examples:\n  gptrecipe import ~/.cache/huggingface/hub/models--gpt2/snapshots/*/ runs/gpt2\n"
                "  gptrecipe sft --init runs/gpt2 train.max_steps=300")
    p.add_argument("hf_dir", help="a local Hugging Face model folder (no downloads)")
    p.add_argument("out", help="the run dir to write (replaced if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new tokens' embedding noise")


def _run_import(args) -> int:
    from .interop import import_hf

    print(f"imported {args.hf_dir} -> {import_hf(args.hf_dir, args.out, seed=args.seed)}")
    return 0


def _run_scale_sweep(args) -> int:
    from .sweep import SweepConfig, load_base, plan, run_sweep

    paths, overrides = _split_paths(args.data, args.overrides)
    cfg = SweepConfig(name=args.name, out_dir=args.out_dir, preset=args.config, overrides=overrides, data_paths=paths,
                      compute=list(args.compute), runs=args.runs, capability=args.capability,
                      **({} if args.batch_exponent is None else {"batch_exponent": args.batch_exponent}),
                      **({} if args.seeds is None else {"seeds": args.seeds}))
    if args.dry_run:
        from collections import Counter

        from .config import apply_overrides
        from .sweep import jobs, member, tokens_per_param

        cfg, base = apply_overrides(cfg, []), load_base(cfg)
        own = member(base, base.model.n_embd, tokens_per_param(base), batch_exponent=cfg.batch_exponent)
        members = plan(base, *cfg.compute, cfg.runs, batch_exponent=cfg.batch_exponent)
        runs_of = Counter(m.name for m, _ in jobs(members, cfg.seeds))
        for m in members:
            seeds = runs_of[m.name]
            print(f"{m.name}: {m.params:,} params, {m.steps} steps of {m.batch_rows} rows, {m.tokens:,} tokens, "
                  f"C {m.compute:.3g} FLOPs" + (f", {seeds} seed{'s' * (seeds > 1)}" if cfg.seeds > 1 else ""))
        print(f"the recipe's own run: n_embd {own.n_embd}, {own.params:,} params, {own.steps} steps, "
              f"C {own.compute:.3g} FLOPs ({own.compute / members[-1].compute:.1f}x the largest)")
        return 0
    rows = run_sweep(cfg)
    print(f"runs: {Path(args.out_dir) / args.name / 'runs.jsonl'} ({len(rows)} runs)")
    return 0


def _run_scale_predict(args) -> int:
    from .sweep import predict

    c = predict(args.sweep, compute=args.compute, name=args.name)
    lo, hi = c["interval"]
    print(f"{c['target']}: predicted {c['predicted_loss']:.4f} [{lo:.4f}, {hi:.4f}], actual {c['actual_loss']:.4f}: "
          f"error {100 * c['relative_error']:+.2f}% at {c['extrapolation']:.1f}x the largest run; plot {c['plot']}")
    cap = c.get("capability") or {}
    if "actual_pass_rate" in cap:
        print(f"pass rate ({cap['problems_kept']}/{cap['problems']} problems): predicted "
              f"{cap['predicted_pass_rate']:.3f}, actual {cap['actual_pass_rate']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .tokenizer import add_cli as add_tokenizer

    parser = argparse.ArgumentParser(prog="gptrecipe", description="Train, align and talk to your own GPT.",
                                     epilog=CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", title="stages, in recipe order")
    for add in (add_tokenizer, _add_pretrain, _add_sample, _add_eval, _add_ape, FINETUNE.add, SFT.add, _add_rank,
                RM.add, PPO.add, _add_rlhf, _add_run, _add_scale, _add_toolset, _add_chat, _add_serve,
                _add_export, _add_import):  # in recipe order
        add(sub)
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
    try:
        return args.func(args)
    except KNOWN_ERRORS as e:
        print(f"gptrecipe {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngptrecipe {args.stage}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
