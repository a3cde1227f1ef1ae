"""Trunk states: an eta sweep computes the trajectories its merges share once (issue 23).

Every merge on the merged clock [gamma_0, gamma_1] (Eq. 14) samples with one expert from gamma_1 down to its
highest switch, and integrates its ODE likelihood with one expert from gamma_0 up to its lowest switch. A
sweep therefore runs that shared *trunk* once, keeping every image's state at fixed *anchors* on the clock,
and each merge runs only its *tail*: from the anchor nearest to its switch on the trunk's side, with the
merged expert, to the end of its path. Paths:

* "ancestral" (down): x in VE coordinates, the next step's index and each image's generator state. Noise is
  drawn per step from the image's own generator, so a tail continues the uncut run bit for bit.
* "ode" (down): the PF-ODE's z. The solve restarts at each anchor (no step straddles one), so its samples
  match an uncut solve within the solver's tolerance, as its batch dependence already does.
* "nll" (up): the augmented state [z, L] of the ODE likelihood (Eq. 8); the dequantisation draw and the
  Hutchinson probe are re-drawn from the image's seed (the same draws) wherever a segment starts.

Anchors sit on a fixed grid eta = k/grid, not at the configured etas, so that adding an eta changes no other
eta's input: it needs its own tail and at most the trunk segments down (up) to its anchor. Heun's sampler is
not shared: its "split" schedule moves its levels with every switch, so no two merges share a step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .experts.base import check_expert, raise_if_not_finite
from .files import atomic_path
from .likelihood import LikelihoodRecord, log_density_at_data, nll_draws, nll_segment
from .merge import pieces
from .noise import gamma_to_noise_level, linear_gamma, vp_alpha_sigma
from .npz import ArraySpec, load_npz
from .sampling import SampleRecord, _normal, ancestral_steps, check_tolerances, ode_segment, solver_norm
from .images import to_uint8
from .seeding import per_image_generators
from .sharing import DIRECTIONS, anchor_index, trunk_end



@dataclass
class TrunkState:
    path: str                  # a key of DIRECTIONS
    level: float               # eta on the merged clock where every image's state sits
    gamma_range: tuple         # the merged clock (gamma_0, gamma_1)
    expert: str                # identity of the expert that ran the trunk ("" before any segment)
    seeds: list                # image seeds, one per row
    state: torch.Tensor        # ancestral: x (VE); ode: z (VP); nll: [z, L] float64 [N, dim + 1]
    nfe: torch.Tensor          # int64 [N]: evaluations spent on each image so far (its batch's, for the ODEs)
    shape: tuple               # (C, H, W)
    options: dict              # the path's settings; a tail must use the same
    next_step: int = 0         # ancestral: the index of the next step (steps, ..., 1); 0 when done
    generators: torch.Tensor | None = None  # ancestral: each image's generator state, uint8 [N, S]
    solver_steps: torch.Tensor | None = None  # ode, nll: the last full step of the solve that held each image

    def rows(self, start: int, stop: int) -> "TrunkState":
        cut = lambda tensor: None if tensor is None else tensor[start:stop]  # noqa: E731
        return replace(self, seeds=self.seeds[start:stop], state=self.state[start:stop], nfe=self.nfe[start:stop],
                       generators=cut(self.generators), solver_steps=cut(self.solver_steps))

    def first_step(self) -> float | None:
        """The step a trunk segment continuing this state starts with: its batch's last full step (the smallest,
        should its rows come from several batches), so it spends no evaluations on choosing and growing one again.
        A tail starts with dopri5's own choice instead: a carried step would straddle the merge's switch, where
        D jumps, and was measured to make the tail less accurate than an independent solve (tests/test_trunks.py)."""
        return None if self.solver_steps is None else float(self.solver_steps.min())


def concat(states: list) -> TrunkState:
    """Batches of one trunk state, each carried to the same level, as one state again."""
    first = states[0]
    joined = lambda name: (None if getattr(first, name) is None  # noqa: E731
                           else torch.cat([getattr(state, name) for state in states]))
    return replace(first, seeds=[s for state in states for s in state.seeds], state=joined("state"), nfe=joined("nfe"),
                   generators=joined("generators"), solver_steps=joined("solver_steps"))


def check_continues(state: TrunkState, path: str, seeds, options: dict, where="the start state") -> None:
    """Refuse a stored state that is not this run's: another path, other images or other settings."""
    problems = [f"{name} {mine!r} where this run has {theirs!r}" for name, mine, theirs in
                (("path", state.path, path), ("seeds", _span(state.seeds), _span(seeds)),
                 ("options", state.options, dict(options))) if mine != theirs]
    if problems:
        raise ValueError(f"{where} does not continue this run: it has {'; '.join(problems)}")


def _span(seeds) -> str:
    seeds = [int(s) for s in seeds]
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1)) if seeds else True
    return f"{seeds[0]}:{seeds[-1] + 1}" if seeds and contiguous else str(seeds)


def expert_identity(expert) -> str:
    """What names an expert across processes: its checkpoint's weights digest, else the object in this one."""
    digest = (getattr(expert, "meta", None) or {}).get("weights_sha256")
    return f"sha256:{digest}" if digest else f"{type(expert).__name__}@{id(expert):x}"


def gamma_at(state: TrunkState, level: float) -> float:
    return linear_gamma(float(level), *state.gamma_range)


# -- the three paths --------------------------------------------------------------------------------

def start(path: str, merged, seeds, shape, options: dict, images: torch.Tensor | None = None,
          device=None) -> TrunkState:
    """Every image at the start of its path: the prior z ~ N(0, I) at gamma_1 (ancestral: x = sqrt(1 + s^2) n,
    the same draw), or the dequantised test image at gamma_0 (nll, `images` uint8 [N, H, W, C])."""
    if path not in DIRECTIONS:
        raise ValueError(f"path must be one of {', '.join(DIRECTIONS)}, got {path!r}")
    if path == "nll" and images is None:
        raise ValueError("the nll trunk starts from the test images: give `images` (uint8 [N, H, W, C])")
    check_expert(merged)
    device = torch.device(device or "cpu")
    seeds, shape, gamma_range = [int(s) for s in seeds], tuple(int(d) for d in shape), (float(merged.gamma_min),
                                                                                         float(merged.gamma_max))
    common = dict(path=path, gamma_range=gamma_range, expert="", seeds=seeds, shape=shape, options=dict(options),
                  nfe=torch.zeros(len(seeds), dtype=torch.int64))
    if path == "nll":
        x0, _, _ = nll_draws(images, seeds, gamma_to_noise_level(gamma_range[0]), options["dequantization"], device)
        z0 = vp_alpha_sigma(gamma_range[0])[0] * x0.double().flatten(1)
        state = torch.cat([z0, torch.zeros(len(seeds), 1, dtype=torch.float64, device=device)], 1)
        return TrunkState(level=0.0, state=state, **common)
    generators = per_image_generators(seeds)
    noise = _normal(generators, shape, device)
    if path == "ode":
        return TrunkState(level=1.0, state=noise, **common)
    state = math.sqrt(1 + gamma_to_noise_level(gamma_range[1]) ** 2) * noise
    return TrunkState(level=1.0, state=state, next_step=int(options["steps"]), generators=_states(generators),
                      **common)


def _states(generators) -> torch.Tensor:
    return torch.stack([g.get_state() for g in generators])


def _generators(states: torch.Tensor) -> list[torch.Generator]:
    generators = []
    for state in states:
        generator = torch.Generator()
        generator.set_state(state.clone())
        generators.append(generator)
    return generators


def _serving_piece(state: TrunkState, merged, low: float, high: float):
    """The one expert of `merged` that serves the gamma interval [low, high], refused if none does alone."""
    slack = 1e-9 * (state.gamma_range[1] - state.gamma_range[0])  # gamma_at(1) may miss gamma_max by an ulp
    for lo, hi, expert in pieces(merged):
        if lo - slack <= low and high <= hi + slack:
            return expert
    raise ValueError(f"the {state.path} trunk between gamma {low:.4g} and {high:.4g} is not served by one expert of "
                     f"this merge (its pieces: {', '.join(f'[{lo:.4g}, {hi:.4g}]' for lo, hi, _ in pieces(merged))})")


def _check_clock(state: TrunkState, merged) -> None:
    clock = (float(merged.gamma_min), float(merged.gamma_max))
    if clock != tuple(state.gamma_range):
        raise ValueError(f"the trunk state runs on the merged clock gamma {state.gamma_range} but this merge on "
                         f"{clock}: not one sweep")


def advance(state: TrunkState, merged, level: float, device=None) -> TrunkState:
    """One trunk segment: every image carried from state.level to `level` by the one expert of `merged` that
    serves the whole segment (all segments of a trunk must be served by the same expert)."""
    direction, device = DIRECTIONS[state.path], torch.device(device or "cpu")
    _check_clock(state, merged)
    level = float(level)
    if not 0 <= level <= 1 or (level > state.level if direction == "down" else level < state.level):
        raise ValueError(f"a {state.path} trunk at eta={state.level:g} runs {direction}, it cannot go to eta={level!r}")
    g_from, g_to = gamma_at(state, state.level), gamma_at(state, level)
    expert = expert_identity(_serving_piece(state, merged, min(g_from, g_to), max(g_from, g_to)))
    if state.expert and expert != state.expert:
        raise ValueError(f"this trunk was run by {state.expert}; the segment to eta={level:g} would be run by {expert}")
    if level == state.level:
        return replace(state, expert=expert)
    x, calls, next_step = state.state.to(device), 0, state.next_step
    with torch.no_grad():
        x, calls, next_step, generator_states, last_step = _segment(state, merged, x, level, g_from, g_to, device)
    steps = None if last_step is None else torch.full((len(state.seeds),), last_step, dtype=torch.float64)
    return replace(state, level=level, expert=expert, state=x.cpu(), nfe=state.nfe + calls, next_step=next_step,
                   generators=generator_states, solver_steps=steps)


def _segment(state: TrunkState, merged, x: torch.Tensor, level: float, g_from: float, g_to: float, device):
    next_step, generator_states = state.next_step, None
    if state.path == "ancestral":
        steps, generators, next_step = int(state.options["steps"]), _generators(state.generators), next_step_below(state, level)
        x = ancestral_steps(merged, x, generators, state.seeds, steps, state.next_step, next_step,
                            state.options["clip_denoised"], state.gamma_range)
        return x, state.next_step - next_step, next_step, _states(generators), None
    if state.path == "ode":
        check_tolerances(state.options["rtol"], state.options["atol"])
        x, calls, last_step = ode_segment(merged, x, g_from, g_to, state.seeds, rtol=state.options["rtol"],
                                          atol=state.options["atol"], norm=solver_norm(state.options["error_norm"]),
                                          first_step=state.first_step())
        return x, calls, next_step, generator_states, last_step
    x, calls, last_step = _nll_segment(state, merged, x, g_from, g_to, device)
    return x, calls, next_step, generator_states, last_step


def next_step_below(state: TrunkState, level: float) -> int:
    """The first ancestral step i (counting down) whose level gamma(i/steps) lies below gamma(level): the steps
    above are the trunk's, served by its expert in every merge that leaves it at or below `level`."""
    steps, boundary, i = int(state.options["steps"]), gamma_at(state, level), state.next_step
    while i > 0 and linear_gamma(i / steps, *state.gamma_range) >= boundary:
        i -= 1
    return i


def _nll_segment(state: TrunkState, merged, z: torch.Tensor, g_from: float, g_to: float, device):
    s0 = gamma_to_noise_level(state.gamma_range[0])
    probe = _probe(state, s0, device)
    return nll_segment(merged, z, state.shape, g_from, g_to, probe, rtol=state.options["rtol"],
                       atol=state.options["atol"], error_norm=state.options["error_norm"], first_step=state.first_step())


def _probe(state: TrunkState, s0: float, device) -> torch.Tensor:
    """Each image's Hutchinson probe, drawn after its dequantisation noise (which needs only the shape)."""
    blank = torch.zeros((len(state.seeds), *state.shape[1:], state.shape[0]), dtype=torch.uint8)
    return nll_draws(blank, state.seeds, s0, state.options["dequantization"], device)[2]


def check_on_path(state: TrunkState, merged) -> None:
    """Refuse a merge that does not continue this trunk: the expert serving the stored part of its path must be
    the trunk's (an "auto" merge whose top piece is another expert, another pair of experts, another clock)."""
    _check_clock(state, merged)
    g_level = gamma_at(state, state.level)
    low, high = (g_level, state.gamma_range[1]) if DIRECTIONS[state.path] == "down" else (state.gamma_range[0], g_level)
    if state.expert and expert_identity(_serving_piece(state, merged, low, high)) != state.expert:
        raise ValueError(f"this merge's path above eta={state.level:g} is served by another expert than the trunk's "
                         f"({state.expert}): it cannot continue this trunk state")


def finish_samples(state: TrunkState, merged, device=None) -> SampleRecord:
    """A merge's tail from a sampling trunk state: its own steps from state.level to gamma_0, then x = z/alpha."""
    check_on_path(state, merged)
    device = torch.device(device or "cpu")
    x = state.state.to(device)
    with torch.no_grad():
        if state.path == "ancestral":
            steps = int(state.options["steps"])
            x = ancestral_steps(merged, x, _generators(state.generators), state.seeds, steps, state.next_step, 0,
                                state.options["clip_denoised"], state.gamma_range)
            calls = state.next_step
        elif state.path == "ode":
            z, calls, _ = ode_segment(merged, x, gamma_at(state, state.level), state.gamma_range[0], state.seeds,
                                      rtol=state.options["rtol"], atol=state.options["atol"],
                                      norm=solver_norm(state.options["error_norm"]))  # see TrunkState.first_step
            x = z / vp_alpha_sigma(state.gamma_range[0])[0]
        else:
            raise ValueError(f"a {state.path} trunk state holds no samples")
    x = x.float().cpu()
    return SampleRecord(x=x, images=to_uint8(x), nfe=state.nfe + calls)


def finish_nll(state: TrunkState, merged, images: torch.Tensor, device=None) -> LikelihoodRecord:
    """A merge's tail from an NLL trunk state: its own solve from state.level to gamma_1, then the bound (Eq. 9)
    with the image's own dequantisation draw."""
    if state.path != "nll":
        raise ValueError(f"a {state.path} trunk state holds no likelihood")
    check_on_path(state, merged)
    device = torch.device(device or "cpu")
    s0 = gamma_to_noise_level(state.gamma_range[0])
    _, log_q, probe = nll_draws(images, state.seeds, s0, state.options["dequantization"], device)
    final, calls, _ = nll_segment(merged, state.state.to(device), state.shape, gamma_at(state, state.level),
                                  state.gamma_range[1], probe, rtol=state.options["rtol"], atol=state.options["atol"],
                                  error_norm=state.options["error_norm"])  # see TrunkState.first_step
    bpd = -(log_density_at_data(final, state.gamma_range[0]) - log_q) / (math.prod(state.shape) * math.log(2))
    raise_if_not_finite(bpd, state.seeds, "the ODE bpd (the expert's output was finite; the solve overflowed)")
    return LikelihoodRecord(bpd=bpd.cpu(), nfe=state.nfe + calls)


# -- a whole sweep in one process (benchmarks, tests) ------------------------------------------------

def sweep(path: str, merges: dict, grid: int, seeds, shape, options: dict, images=None, batch_size: int = 64,
          device=None) -> tuple[dict, float]:
    """Every merge of `merges` ({label: (switch eta, merged expert)}: one clock, one trunk expert) as the
    pipeline runs them: per batch, the trunk once through the anchors k/grid down (up) to the last one needed,
    then each merge's tail from its anchor. Returns ({label: SampleRecord or LikelihoodRecord}, network
    evaluations per image of the whole sweep: trunk segments plus tails)."""
    direction = DIRECTIONS[path]
    anchors = {label: anchor_index(direction, eta, grid) for label, (eta, _) in merges.items()}
    last = min(anchors.values()) if direction == "down" else max(anchors.values())
    # the merge reaching furthest along the trunk has a piece serving every segment of it
    trunk_merge = merges[min(anchors, key=lambda label: merges[label][0] * (1 if direction == "down" else -1))][1]
    seeds, parts, evaluations = [int(s) for s in seeds], {label: [] for label in merges}, 0.0
    for begin in range(0, len(seeds), batch_size):
        rows = slice(begin, begin + batch_size)
        batch_images = None if images is None else images[rows]
        states = {trunk_end(direction, grid): start(path, trunk_merge, seeds[rows], shape, options, batch_images,
                                                    device)}
        k, step = trunk_end(direction, grid), -1 if direction == "down" else 1
        while k != last:  # one anchor further along at a time
            states[k + step] = advance(states[k], trunk_merge, (k + step) / grid, device)
            k += step
        evaluations += float(states[last].nfe.sum())
        for label, (_, merged) in merges.items():
            state = states[anchors[label]]
            record = (finish_nll(state, merged, batch_images, device) if path == "nll"
                      else finish_samples(state, merged, device))
            evaluations += float((record.nfe - state.nfe).sum())
            parts[label].append(record)
    return {label: _concatenate(records) for label, records in parts.items()}, evaluations / len(seeds)


def _concatenate(records):
    first = records[0]
    return type(first)(**{name: torch.cat([getattr(r, name) for r in records]) for name in vars(first)})


# -- files ------------------------------------------------------------------------------------------

_SPECS = {"state": ArraySpec("a float state [N, ...]", kinds="f", finite=True),
          "nfe": ArraySpec("integers [N]", ndims=(1,), kinds="iu"),
          "seeds": ArraySpec("integers [N]", ndims=(1,), kinds="iu"),
          "generators": ArraySpec("generator states uint8 [N, S]", ndims=(2,), kinds="u", itemsize=1),
          "solver_steps": ArraySpec("finite step sizes [N]", ndims=(1,), kinds="f", finite=True),
          "record": ArraySpec("a JSON string", ndims=(0,), kinds="U")}
_RECORD = ("path", "level", "gamma_range", "expert", "shape", "options", "next_step")


def save_trunk_state(path, state: TrunkState) -> None:
    """An .npz: the state, NFE, seeds (and generator states) as arrays, the rest as a JSON record."""
    record = {key: getattr(state, key) for key in _RECORD}
    arrays = dict(state=state.state.cpu().numpy(), nfe=state.nfe.numpy(), seeds=np.array(state.seeds, np.int64),
                  record=np.array(json.dumps(record)))
    for name in ("generators", "solver_steps"):
        if getattr(state, name) is not None:
            arrays[name] = getattr(state, name).numpy()
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def load_trunk_state(path) -> TrunkState:
    record = json.loads(str(load_npz(path, ["record"], "a trunk state", _SPECS)["record"]))
    if not isinstance(record, dict) or set(record) != set(_RECORD) or record["path"] not in DIRECTIONS:
        raise ValueError(f"{path}: not a trunk state record (it must hold {', '.join(_RECORD)})")
    arrays = load_npz(path, None, "a trunk state", _SPECS)  # generators (ancestral), solver_steps (ODEs) if held
    missing = [name for name in ("state", "nfe", "seeds", *(["generators"] if record["path"] == "ancestral" else []))
               if name not in arrays]
    if missing:
        raise ValueError(f"{path}: a {record['path']} trunk state must hold {', '.join(missing)}")
    if not len(arrays["state"]) == len(arrays["nfe"]) == len(arrays["seeds"]):
        raise ValueError(f"{path}: a trunk state's arrays must hold one row per image")
    return TrunkState(path=record["path"], level=float(record["level"]), gamma_range=tuple(record["gamma_range"]),
                      expert=record["expert"], seeds=arrays["seeds"].tolist(), state=torch.from_numpy(arrays["state"]),
                      nfe=torch.from_numpy(arrays["nfe"]).long(), shape=tuple(record["shape"]),
                      options=record["options"], next_step=int(record["next_step"]),
                      generators=torch.from_numpy(arrays["generators"]) if "generators" in arrays else None,
                      solver_steps=torch.from_numpy(arrays["solver_steps"]) if "solver_steps" in arrays else None)
