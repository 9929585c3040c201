"""`nncaption llm ...`: LLM endpoints for the agents.

- `llm offline`    the offline composer endpoint (NOT an LLM: the random-search baseline)
- `llm replay`     serve a `--llm-record` file back, matched by request hash
- `llm serve-vllm` start vLLM with the right flags, wait for /health, stop it on exit
- `llm design`     one designer call against an endpoint, written to a candidate file

`add_llm_options` / `llm_settings_from_args` / `llm_client_from_args` give every
other command that talks to an LLM the same endpoint flags, including `--llm-record`.

Mistakes in the user's own setup are refused before any work, with a category and
a next step: a port out of range (usage, exit 2), a port already taken
(environment, exit 2), `--out` naming a folder (usage, exit 2, before the LLM
call), a base URL without http:// or https:// (config, at once, no retries).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncaption.netapi.errors import ConfigError, EnvironmentProblem, UsageError
from nncaption.netapi.safetext import safe_text, strict_dumps

if TYPE_CHECKING:
    from nncaption.agents.client import LLMClient
    from nncaption.agents.settings import LLMSettings

HELP = """LLM endpoints for the agents:

  offline     an OpenAI-compatible endpoint that is NOT an LLM: the random-search baseline
              (it composes models from the snippet library with seeded choices)
  replay      serve a --llm-record file back, matched by request hash
  serve-vllm  start vLLM with the right flags, wait for /health, stop it on exit
  design      one designer call against an endpoint, written to a candidate file

The endpoint flags of `llm design` (--llm-base-url, --llm-model, --llm-config, --llm-record, ...)
are shared by every command that talks to an LLM.
"""

DEFAULT_PORT = 8000
MAX_PORT = 65535


def check_port(port: int, flag: str = "--port") -> int:
    """`port` when it is 0 (any free port) or 1..65535; a usage error naming the flag otherwise."""
    if not 0 <= port <= MAX_PORT:
        raise UsageError(f"{flag} {port} is out of range: a TCP port is 1..{MAX_PORT} (0 picks any free port)",
                         f"choose e.g. {flag} {DEFAULT_PORT}, or {flag} 0 to let the system pick a free one.")
    return port


def port_taken(host: str, port: int, flag: str = "--port") -> EnvironmentProblem:
    """The error for a port that another program is already listening on."""
    return EnvironmentProblem(f"{host}:{port} is already in use by another program",
                              f"choose another {flag} (0 picks a free one), or stop the program that listens there "
                              f"(e.g. `ss -ltnp | grep :{port}`).")


def ensure_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Refuse a port that is taken before starting a server on it (cheap, before any work)."""
    import errno
    import socket

    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise port_taken(host, port, flag) from None
            raise


# ------------------------------------------------------------------ shared endpoint options


def add_llm_options(parser: argparse.ArgumentParser) -> None:
    """Endpoint flags for any command that talks to an LLM (all roles share them; per-role via --llm-config)."""
    g = parser.add_argument_group("LLM endpoint")
    g.add_argument("--llm-base-url", metavar="URL", default=os.environ.get("NNCAPTION_LLM_BASE_URL"),
                   help="OpenAI-compatible base URL ending in /v1 (default $NNCAPTION_LLM_BASE_URL, "
                        "else http://127.0.0.1:8000/v1)")
    g.add_argument("--llm-model", metavar="NAME", default=os.environ.get("NNCAPTION_LLM_MODEL"),
                   help="model name (default deepseek-ai/DeepSeek-R1-0528-Qwen3-8B)")
    g.add_argument("--llm-api-key-env", metavar="VAR", default=None,
                   help="NAME of the environment variable holding the API key (default: none, 'EMPTY' is sent; "
                        "OPENAI_API_KEY only for api.openai.com)")
    g.add_argument("--llm-timeout", metavar="S", type=float, default=None, help="request timeout in seconds")
    g.add_argument("--llm-max-tokens", metavar="N", type=int, default=None, help="max tokens per reply")
    g.add_argument("--llm-max-concurrency", metavar="N", type=int, default=None,
                   help="requests in flight at once, across roles")
    g.add_argument("--llm-config", metavar="FILE.json", type=Path, default=None,
                   help="LLM settings as JSON: {'shared': {...}, 'designer': {...}, 'reviewer': {...}, "
                        "'fixer': {...}, 'max_concurrency': N}; the flags above override 'shared'")
    g.add_argument("--llm-record", metavar="FILE.jsonl", type=Path, default=None,
                   help="append every LLM request and reply to this file (serve it with `nncaption llm replay`)")


def llm_settings_from_args(args: argparse.Namespace) -> LLMSettings:
    """LLMSettings from --llm-config plus the flag overrides."""
    from nncaption.agents.settings import LLMSettings

    data: dict[str, Any] = {}
    if getattr(args, "llm_config", None):
        path = Path(args.llm_config)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read --llm-config {path}: {e.strerror or e}",
                              "pass an existing JSON file") from e
        except ValueError as e:
            raise ConfigError(f"--llm-config {path} is not valid JSON: {e}", "fix the JSON syntax") from e
        if not isinstance(data, dict):
            raise ConfigError(f"--llm-config {path} must hold a JSON object", "see `nncaption llm --help`")
    shared = dict(data.get("shared") or {})
    for flag, field in (("llm_base_url", "base_url"), ("llm_model", "model"), ("llm_api_key_env", "api_key_env"),
                        ("llm_timeout", "timeout_s"), ("llm_max_tokens", "max_tokens")):
        value = getattr(args, flag, None)
        if value is not None:
            shared[field] = value
    data["shared"] = shared
    if getattr(args, "llm_max_concurrency", None) is not None:
        data["max_concurrency"] = args.llm_max_concurrency
    return LLMSettings.from_dict(data)


def llm_client_from_args(args: argparse.Namespace) -> LLMClient:
    """An LLMClient for the parsed endpoint flags (recording when --llm-record is given)."""
    from nncaption.agents.client import LLMClient

    return LLMClient(llm_settings_from_args(args), record_path=getattr(args, "llm_record", None))


# ------------------------------------------------------------------ serving helpers


def _serve(server: Any, banner: str) -> int:
    """Run an HTTP server in the foreground until Ctrl-C or SIGTERM."""
    import errno

    try:
        server.bind()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise port_taken(server.host, server._requested_port) from None
        raise
    print(f"{banner}\nserving at {server.base_url}  (GET /health, GET /v1/models, POST /v1/chat/completions)",
          flush=True)
    with _sigterm_as_interrupt():
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    print("stopped", flush=True)
    return 0


class _sigterm_as_interrupt:  # noqa: N801 - used as a context manager
    """Treat SIGTERM like Ctrl-C while serving, so cleanup runs."""

    def __enter__(self) -> None:
        def raise_interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        self._old: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._old)


# ------------------------------------------------------------------ commands


def cmd_offline(args: argparse.Namespace) -> int:
    from nncaption.agents.offline_server import OfflineComposerServer

    check_port(args.port)
    kinds = [k.strip() for k in args.fault_kinds.split(",") if k.strip()] if args.fault_kinds else None
    extra = {"fault_kinds": kinds} if kinds else {}
    server = OfflineComposerServer(args.host, args.port, seed=args.seed, fault_rate=args.fault_rate,
                                   latency_ms=args.latency_ms, split_reasoning=args.split_reasoning,
                                   max_context_tokens=args.max_context_tokens, **extra)
    banner = ("nncaption offline composer: NOT an LLM. It composes models from the snippet library with seeded "
              "choices (the random-search baseline).\n"
              f"seed={args.seed} fault-rate={args.fault_rate} latency-ms={args.latency_ms}")
    return _serve(server, banner)


def cmd_replay(args: argparse.Namespace) -> int:
    from nncaption.agents.replay_server import ReplayServer

    check_port(args.port)
    server = ReplayServer(args.file, args.host, args.port)
    n = sum(len(v) for v in server.entries.values())
    return _serve(server, f"nncaption replay of {args.file}: {n} recorded replies for {len(server.entries)} requests")


def cmd_serve_vllm(args: argparse.Namespace) -> int:
    from nncaption.agents.vllm_server import VLLMProcess, base_url, find_vllm, health_url

    if check_port(args.port) == 0:
        raise UsageError("serve-vllm needs a fixed --port (vLLM cannot report a port it picked)",
                         f"choose e.g. --port {DEFAULT_PORT}.")
    argv = serve_vllm_argv(args)  # flag mistakes are refused before the port check and the search for vllm
    ensure_port_free(args.host.strip("[]"), args.port)
    argv[0] = find_vllm()
    print("starting: " + " ".join(shlex.quote(a) for a in argv), flush=True)
    proc = VLLMProcess(argv, health_url(args.host, args.port))
    with _sigterm_as_interrupt():
        try:
            proc.start()
            proc.wait_ready(timeout_s=args.health_timeout)
            served = args.served_model_name or args.model
            print(f"vLLM is ready at {base_url(args.host, args.port)} (model {served}); Ctrl-C stops it",
                  flush=True)
            assert proc.proc is not None
            code = proc.proc.wait()
            print(f"vllm serve exited with status {code}", file=sys.stderr)
            return 1 if code else 0
        except KeyboardInterrupt:
            print("stopping vLLM ...", flush=True)
            return 0
        finally:
            proc.stop()


def serve_vllm_argv(args: argparse.Namespace) -> list[str]:
    """The `vllm serve` command line for the parsed `llm serve-vllm` flags (argv[0] is "vllm")."""
    from nncaption.agents.vllm_server import vllm_command

    if args.max_model_len is not None and args.max_model_len < 0:
        raise UsageError(f"--max-model-len {args.max_model_len} is negative",
                         "give the context length in tokens (e.g. 32768), or 0 for vLLM's default.")
    if args.gpu_memory_utilization is not None and not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise UsageError(f"--gpu-memory-utilization {args.gpu_memory_utilization:g} is outside (0, 1]",
                         "give the fraction of GPU memory vLLM may use, e.g. 0.9.")
    seqs = args.max_num_seqs if args.max_num_seqs is not None else args.concurrency
    if seqs is not None and seqs < 1:
        raise UsageError(f"--max-num-seqs {seqs} must be at least 1", "give the requests served at once, e.g. 4.")
    return vllm_command(args.model, args.port, args.host.strip("[]"), reasoning_parser=args.reasoning_parser,
                        max_model_len=args.max_model_len, served_model_name=args.served_model_name,
                        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=seqs,
                        extra=args.extra or "")


def _check_out(out: Path) -> Path:
    """Refuse an --out that cannot take the candidate file, before the (slow, costly) LLM call."""
    if out.is_dir():
        raise UsageError(f"--out {safe_text(out, 300)} is a folder; it must name the candidate file to write",
                         f"give a file path, e.g. --out {safe_text(out / 'candidate.py', 300)}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {safe_text(out, 300)}: {safe_text(parent, 300)} is a file, not a folder",
                             "give a path inside an existing folder (or one that can be created).")
        if parent.exists():
            break
    return out


def cmd_design(args: argparse.Namespace) -> int:
    from nncaption.agents.designer import design_sync
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.prompts.library import DatasetFacts

    out = _check_out(Path(args.out))
    settings = llm_settings_from_args(args)  # a bad URL or config fails here, before any data work
    if args.data_dir is not None:
        public = Path(args.data_dir)
    else:
        from nncaption.netapi.data.resolve import resolve_dataset

        public = resolve_dataset("synthetic", coco_root=None, progress=not args.json).public_dir
    facts = DatasetFacts.from_meta(PreparedData.open(public).meta)
    from nncaption.agents.client import LLMClient

    client = LLMClient(settings, record_path=getattr(args, "llm_record", None))
    d = design_sync(client, facts, k=args.k, seed=args.seed, decoder=args.decoder,
                    from_lemur=args.snippets_from_lemur)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(d.code, encoding="utf-8")
    ex = d.exchange
    report = {"ok": True, "out": str(out), "summary": d.summary, "prm": d.prm, "snippets": d.snippets,
              "model": ex.model, "model_returned": ex.model_returned, "endpoint": ex.endpoint,
              "latency_s": round(sum(e.latency_s for e in d.exchanges), 3),
              "prompt_tokens": ex.usage.prompt_tokens, "completion_tokens": ex.usage.completion_tokens,
              "reasoning_tokens": ex.usage.reasoning_tokens, "notes": d.notes}
    if args.json:
        print(strict_dumps(report))
    else:
        print(f"wrote {out}: {safe_text(d.summary, 300)}")
        print(f"  hyperparameters: {strict_dumps(d.prm)}")
        for note in d.notes:
            print(f"  note: {safe_text(note, 300)}")
        print(f"  {safe_text(ex.model_returned or ex.model, 200)} at {ex.endpoint}, {report['latency_s']} s, "
              f"tokens prompt/completion/reasoning "
              f"{ex.usage.prompt_tokens}/{ex.usage.completion_tokens}/{ex.usage.reasoning_tokens}")
        print(f"  next: nncaption check {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    llm = subparsers.add_parser("llm", help="LLM endpoints: offline composer, replay, vLLM, one design call",
                                description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = llm.add_subparsers(dest="llm_command", metavar="SUBCOMMAND")
    llm.set_defaults(func=lambda a: (llm.print_help(), 2)[1])

    def serve_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")

    off = sub.add_parser("offline", help="offline composer endpoint (NOT an LLM; the random-search baseline)",
                         description="An OpenAI-compatible server that composes valid captioning models from the "
                                     "snippet library with seeded choices. It is not an LLM: it is the "
                                     "random-search baseline over the same search space.")
    serve_opts(off)
    off.add_argument("--seed", type=int, default=0, help="seed of the composer's choices (default 0)")
    off.add_argument("--fault-rate", type=float, default=0.0, metavar="F",
                     help="probability of a planted defect in a designer reply (0..1; default 0)")
    off.add_argument("--fault-kinds", default=None, metavar="K1,K2",
                     help="defect kinds to plant: syntax,shape,missing-method,forbidden-import,output-contract")
    off.add_argument("--latency-ms", type=float, default=0.0, metavar="MS", help="sleep before each reply")
    off.add_argument("--split-reasoning", action="store_true",
                     help="put the reasoning in message.reasoning (like vLLM --reasoning-parser) instead of <think>")
    off.add_argument("--max-context-tokens", type=int, default=None, metavar="N",
                     help="refuse prompts longer than N tokens with vLLM's context-length 400")
    off.set_defaults(func=cmd_offline)

    rep = sub.add_parser("replay", help="serve a --llm-record file back (matched by request hash)")
    rep.add_argument("file", type=Path, metavar="FILE.jsonl")
    serve_opts(rep)
    rep.set_defaults(func=cmd_replay)

    vl = sub.add_parser("serve-vllm", help="start `vllm serve MODEL` with the reasoning parser, wait for /health")
    vl.add_argument("model", metavar="MODEL", help="e.g. deepseek-ai/DeepSeek-R1-0528-Qwen3-8B")
    serve_opts(vl)
    vl.add_argument("--reasoning-parser", default="auto",
                    help="vLLM reasoning parser (default auto: deepseek_r1 for R1-style names; 'none' to disable)")
    vl.add_argument("--max-model-len", type=int, default=32768, metavar="N",
                    help="context length to serve (default 32768: prompt + reasoning + answer; 0 = vLLM's default, "
                         "the model's full context, which needs far more KV-cache memory)")
    vl.add_argument("--gpu-memory-utilization", type=float, default=None, metavar="F",
                    help="fraction of GPU memory vLLM may take (vLLM's default 0.9)")
    vl.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                    help="requests served at once (default: --concurrency; else vLLM's default)")
    vl.add_argument("--concurrency", type=int, default=None, metavar="N",
                    help="the run's concurrency (candidates in flight): sets --max-num-seqs when that is not given")
    vl.add_argument("--served-model-name", default=None, metavar="NAME",
                    help="the name clients use (default: MODEL); give the same to --llm-model / model in the config")
    vl.add_argument("--extra", default="", metavar="ARGS", help="more vllm serve arguments, quoted as one string")
    vl.add_argument("--health-timeout", type=float, default=1800.0, metavar="S",
                    help="seconds to wait for /health (default 1800)")
    vl.set_defaults(func=cmd_serve_vllm)

    de = sub.add_parser("design", help="one designer call against an endpoint; writes the candidate file")
    de.add_argument("--out", type=Path, required=True, metavar="FILE.py", help="where to write the candidate")
    de.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                    help="prepared dataset public dir (default: the synthetic set, prepared on first use)")
    de.add_argument("--k", type=int, default=5, choices=(2, 5, 10), help="backbone snippets in the prompt")
    de.add_argument("--snippets-from-lemur", action="store_true",
                    help="take the backbone snippets from an installed nn-dataset package instead of ours")
    de.add_argument("--decoder", choices=("lstm", "gru", "transformer"), default=None, help="decoder family hint")
    de.add_argument("--seed", type=int, default=0, help="snippet sampling seed")
    de.add_argument("--json", action="store_true", help="print one JSON object")
    add_llm_options(de)
    de.set_defaults(func=cmd_design)
