"""Global recipes, per-process batches: the arithmetic that makes 1, 2, 4 or 8 GPUs train one recipe.

A method's ``train:`` block states the recipe as the paper does, over all processes together:

* ``prompts_per_round``: prompts sampled per round (SPO SD-1.5: 40 = the official 10 per GPU x 4);
  rounds per epoch = number of prompts // prompts_per_round, whatever the number of processes;
* ``train_batch_size x grad_accum``: pairs (DDPO: transitions) per optimizer step;
* ``micro_batch`` (optional): the most pairs one process runs in one forward pass, a memory knob
  that changes no recipe number (null: ``train_batch_size / processes``).

Each of ``world`` processes then samples ``prompts_per_round / world`` prompts and takes
``train_batch_size x grad_accum / world`` pairs per optimizer step, as micro-batches of the largest
size <= the cap that divides that share, accumulated over the rest. With one process nothing
changes: the micro-batch is ``train_batch_size`` and the accumulation ``grad_accum``. A recipe
whose global numbers cannot be shared equally stops before any model is loaded, with an error
naming the keys, the number of processes and the nearest valid values. Torch-free and pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class WorldSizeError(ValueError):
    """The recipe's global batch cannot be split over the launched processes."""


@dataclass(frozen=True)
class ProcessBatches:
    """What one of ``world`` processes does for a global recipe."""

    world: int
    prompts: int           # prompts this process samples per round
    micro_batch: int       # pairs (transitions) per forward pass in this process
    accumulation: int      # micro-batches per optimizer step in this process
    global_step: int       # pairs per optimizer step over all processes (the recipe's batch)


def launch_world_size(environ=None) -> int:
    """Processes of this launch: ``WORLD_SIZE`` as ``accelerate launch`` / ``torchrun`` set it, else 1."""
    value = (os.environ if environ is None else environ).get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        raise WorldSizeError(f"environment variable WORLD_SIZE is {value!r}; expected a number of processes")
    if world < 1:
        raise WorldSizeError(f"environment variable WORLD_SIZE is {world}; it must be >= 1")
    return world


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest_multiples(value: int, world: int) -> str:
    below, above = (value // world) * world, -(-value // world) * world
    return " or ".join(str(v) for v in dict.fromkeys(v for v in (below, above) if v >= world))


def _valid_worlds(*totals: int, limit: int = 64) -> str:
    common = [d for d in _divisors(min(totals)) if all(t % d == 0 for t in totals) and d <= limit]
    return ", ".join(map(str, common))


def per_process(*, prompts_per_round: int, train_batch_size: int, grad_accum: int,
                micro_batch: int | None, world: int, prefix: str = "train") -> ProcessBatches:
    """The per-process share of a global recipe (see the module docstring).

    Raises:
        WorldSizeError naming every key whose global value ``world`` does not divide, the nearest
        valid values and the numbers of processes that would keep the recipe.
    """
    if world < 1:
        raise WorldSizeError(f"the number of processes is {world}; it must be >= 1")
    step = train_batch_size * grad_accum
    errors = []
    if prompts_per_round % world:
        errors.append(f"config key '{prefix}.prompts_per_round' is {prompts_per_round} (prompts per "
                      f"round, all processes together): it cannot be split equally over {world} "
                      f"processes; the nearest valid values are {_nearest_multiples(prompts_per_round, world)}")
    if step % world:
        errors.append(f"config keys '{prefix}.train_batch_size' x '{prefix}.grad_accum' = "
                      f"{train_batch_size} x {grad_accum} = {step} pairs per optimizer step (all "
                      f"processes together) cannot be split equally over {world} processes; the "
                      f"nearest valid global batches are {_nearest_multiples(step, world)}")
    if errors:
        raise WorldSizeError("; ".join(errors) + f". The recipe holds on {_valid_worlds(prompts_per_round, step)} "
                             f"processes; launch one of those, or change the keys")
    share = step // world
    cap = micro_batch if micro_batch is not None else max(1, train_batch_size // world)
    micro = max(d for d in _divisors(share) if d <= cap)
    return ProcessBatches(world=world, prompts=prompts_per_round // world, micro_batch=micro,
                          accumulation=share // micro, global_step=step)


def check_dpo_world(batch_size: int, micro_batch: int, world: int, prefix: str = "train.diffusion_dpo") -> None:
    """Diffusion-DPO's global ``batch_size`` over ``world`` processes of ``micro_batch`` pairs each."""
    if batch_size % (micro_batch * world):
        raise WorldSizeError(
            f"config key '{prefix}.batch_size' is {batch_size} (pairs per optimizer step, all "
            f"processes together): with {world} processes of '{prefix}.micro_batch' = {micro_batch} "
            f"pairs per pass it must be a multiple of {micro_batch * world}; the nearest valid values "
            f"are {_nearest_multiples(batch_size, micro_batch * world)}. The recipe holds on "
            f"{_valid_worlds(batch_size // micro_batch) if batch_size % micro_batch == 0 else 'no'} processes")
