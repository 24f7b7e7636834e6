"""`jitcache buckets`, `jitcache profiles ...`, `jitcache plan`: what will be compiled, before compiling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional


from jitcache.planning.buckets import BucketPolicy
from jitcache.planning import DEFAULT_PROFILE
from jitcache.errors import UsageError

from ._spec import argument, command, option
from .output import Format, Output

if TYPE_CHECKING:
    import typer

    from jitcache.planning.profiles import Profile

FORMAT = option(Format.human, "--format", help="human (tables) or json (stdout holds only JSON).")
PROFILE = option(DEFAULT_PROFILE, "--profile", "-p", help="A built-in profile name or a path to a profile .toml.")


def _policy_rows(policy: BucketPolicy) -> list[list]:
    rows, lower = [], 0
    for bucket in policy.buckets():
        rows.append([f"{lower + 1 if lower else 0}..{bucket}", bucket, f"{bucket / (lower + 1):.2f}x"])
        lower = bucket
    return rows


def buckets(
    max_num_batched_tokens: int = option(..., "--max-num-batched-tokens", "-n",
                                               help="The buffer capacity: the largest bucket."),
    steps_per_octave: int = option(1, "--steps-per-octave", "-k", help="Buckets per doubling (1 = powers of two)."),
    min_bucket: int = option(1, "--min-bucket", help="The smallest bucket."),
    alignment: int = option(1, "--alignment", help="Round every bucket up to a multiple of this."),
    fmt: Format = FORMAT,
) -> None:
    """Show the bucket set for a cap: its values, size and worst-case padding."""
    try:
        policy = BucketPolicy(max_num_batched_tokens, min_bucket=min_bucket,
                              steps_per_octave=steps_per_octave, alignment=alignment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Output(fmt)

    def render(o: Output) -> None:
        o.table(None, ["num_tokens", "bucket", "worst padding"], _policy_rows(policy),
                justify={"bucket": "right", "worst padding": "right"})
        o.print(f"{len(policy)} buckets for max_num_batched_tokens={policy.max_num_batched_tokens}, "
                f"steps_per_octave={policy.steps_per_octave}; worst-case padding "
                f"{policy.max_padding_ratio:.3f}x (bucket(n) / n)")

    out.result(policy.to_dict(), render)


def profiles_list(fmt: Format = FORMAT) -> None:
    """List the built-in profiles."""
    from jitcache.planning.profiles import builtin_profile_names, load_profile

    loaded = [load_profile(name) for name in builtin_profile_names()]
    data = [_profile_summary(p) for p in loaded]

    def render(o: Output) -> None:
        o.table(None, ["name", "model", "hidden", "experts", "top-k", "dtype", "EP", "cap", "modes", "arch"],
                [[d["name"], d["model"], d["hidden"], d["num_experts"], d["num_topk"], d["dispatch_dtype"],
                  d["ep"], d["max_num_batched_tokens"], ",".join(d["modes"]), d["arch"]] for d in data])

    Output(fmt).result({"profiles": data}, render)


def profiles_show(name: str = argument(..., help="A built-in profile name or a path to a .toml file."),
                  fmt: Format = FORMAT) -> None:
    """Show one profile, validated, with its bucket set."""
    from jitcache.planning.profiles import load_profile

    profile = load_profile(name)
    data = profile.to_dict()
    data["policy"] = profile.policy.to_dict()

    def render(o: Output) -> None:
        o.print(f"[bold]{profile.name}[/bold]  ({profile.source})")
        if profile.description:
            o.print(profile.description)
        for section in ("model", "parallel", "serving", "deep_ep", "target"):
            o.print(f"[bold]\\[{section}][/bold]")
            for key, value in data[section].items():
                o.print(f"  {key} = {value}")
        o.print(f"buckets ({len(profile.policy)}): {', '.join(map(str, profile.policy.buckets()))}")

    Output(fmt).result(data, render)


def _profile_summary(p: Profile) -> dict:
    par = p.parallel
    return {
        "name": p.name, "model": p.model.name, "hidden": p.model.hidden, "num_experts": p.model.num_experts,
        "num_topk": p.model.num_topk, "dispatch_dtype": p.model.dispatch_dtype,
        "ep": f"EP{par.ep_size}" + (f" ({par.nodes}x{par.ranks_per_node})" if par.nodes > 1 else ""),
        "max_num_batched_tokens": p.serving.max_num_batched_tokens, "modes": list(p.serving.modes),
        "arch": p.target.arch, "description": p.description,
    }


_SHOWN_PARAMS = ("do_expand", "do_cpu_sync", "reuse_slot_indices", "cached_mode", "use_expanded_layout",
                 "hidden_bytes", "hidden", "num_experts", "num_topk", "num_scaleup_ranks", "num_scaleout_ranks",
                 "sequential")


def plan_cmd(
    profile: str = PROFILE,
    modes: Optional[list[str]] = option(None, "--mode", "-m", help="Restrict to these modes (repeatable)."),
    fmt: Format = FORMAT,
) -> None:
    """Show what warmup will compile for a profile: counts per family and mode, then every variant."""
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import FAMILIES, plan

    prof = load_profile(profile)
    try:
        the_plan = plan(prof, modes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def render(o: Output) -> None:
        counts = the_plan.counts()
        o.table(f"{prof.name}: {len(the_plan.kernels)} kernels: {len(the_plan)} variants over "
                f"{len(the_plan.buckets)} buckets + the buffer's barrier",
                ["mode", *FAMILIES, "total"],
                [[mode, *(c.get(f, 0) for f in FAMILIES), sum(c.values())] for mode, c in counts.items()])
        rows = []
        for v in the_plan.kernels:
            params = v.param_dict
            shown = " ".join(f"{k}={params[k]}" for k in _SHOWN_PARAMS if k in params)
            rows.append(["-" if v.num_max_tokens_per_rank is None else v.num_max_tokens_per_rank, v.mode, v.family,
                         shown])
        o.table(None, ["num_max_tokens_per_rank", "mode", "family", "template parameters"], rows,
                justify={"num_max_tokens_per_rank": "right"})

    out = Output(fmt)
    out.result(the_plan.to_dict() if out.is_json else {}, render)  # the fingerprints (hashlib) only for JSON


def register(app: typer.Typer) -> None:
    import typer

    profiles_app = typer.Typer(help="List and show deployment profiles.", no_args_is_help=True)
    profiles_app.command("list")(command(profiles_list))
    profiles_app.command("show")(command(profiles_show))
    app.command("buckets")(command(buckets))
    app.add_typer(profiles_app, name="profiles")
    app.command("plan")(command(plan_cmd))
