"""Talking to a model: the batched generation engine, the OpenAI-compatible server, the web chat, the terminal chat.

    gptrecipe chat runs/speedrun/sft                 # terminal chat (streaming, /reset, /save FILE)
    gptrecipe serve runs/speedrun/sft --port 8000    # OpenAI API + web chat at http://127.0.0.1:8000/

`engine.Engine` is the one generation engine behind all of them (continuous batching over the KV cache);
`api.create_app` builds the FastAPI app; `feedback` turns the web chat's thumbs and regenerations into
reward-model comparisons; `hf_tokenizer` exports the tokenizer as a folder `transformers` loads.
"""
