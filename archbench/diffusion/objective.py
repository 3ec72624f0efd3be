"""The objective protocol: everything the rest of archbench may ask of a diffusion objective.

Training draws each example's time from the objective (``draw_t``) and asks it for per-example losses at
that time and noise (``losses``); sampling asks for its samplers by name (``samplers``,
``default_sampler``, ``sample``); the configuration asks for its settings (``Settings``, a dataclass whose
fields are the keys of ``diffusion=<name>``). Nothing outside ``archbench.diffusion`` needs to know which
objective it holds, so a new objective is one module here plus one line in :mod:`.factory`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ._sampling import randn
from .guidance import guided_model

Model = Callable[..., torch.Tensor]


def maybe_guided(
    model: Model,
    cfg_scale: float,
    null_class: int | None,
    model_kwargs: dict[str, Any] | None,
    guide_channels: int | None,
) -> Model:
    """``model`` wrapped in classifier-free guidance when ``cfg_scale != 1`` (checked for what guidance needs)."""
    if cfg_scale == 1.0:
        return model
    if null_class is None or not model_kwargs or model_kwargs.get("y") is None:
        raise ValueError("cfg_scale != 1 needs null_class and model_kwargs['y']")
    if guide_channels is not None and guide_channels < 1:
        raise ValueError(f"guide_channels must be a positive channel count (or None: all), got {guide_channels}")
    return guided_model(model, cfg_scale, null_class, guide_channels)


class Objective:
    """Base of every objective. A subclass sets ``name``, ``samplers``, ``default_sampler`` and ``Settings``
    and implements ``from_settings``, ``draw_t``, ``losses`` and ``_run_sampler``; ``training_losses`` and
    ``sample`` (validation, guidance, dispatch) are shared."""

    name: ClassVar[str] = ""
    samplers: ClassVar[tuple[str, ...]] = ()
    default_sampler: ClassVar[str] = ""
    Settings: ClassVar[type] = object

    @classmethod
    def from_settings(cls, settings: Any) -> Objective:
        """The objective an instance of ``cls.Settings`` describes."""
        raise NotImplementedError

    def draw_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``batch`` training times drawn from this objective's training distribution (on ``device``)."""
        raise NotImplementedError

    def losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses [B] at the given times and standard-normal noise; ``loss`` is what trains."""
        raise NotImplementedError

    def _run_sampler(self, sampler: str, model: Model, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def check_sampler(self, sampler: str | None) -> str:
        """``sampler`` (None: the default) if this objective offers it, else ValueError listing the valid ones."""
        chosen = sampler or self.default_sampler
        if chosen not in self.samplers:
            raise ValueError(
                f"unknown sampler {chosen!r} for diffusion={self.name}; valid choices: {', '.join(self.samplers)}"
            )
        return chosen

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses [B] at times and noise drawn here from ``generator`` (a library convenience; the
        Trainer and ``bench step`` draw per example in :mod:`archbench.training.noise`)."""
        gen_device = generator.device if generator is not None else x0.device
        t = self.draw_t(x0.shape[0], generator, gen_device)
        noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
        return self.losses(model, x0, t.to(x0.device), noise, model_kwargs)

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        guide_channels: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """Samples x0 [shape] with the named sampler (default: ``default_sampler``).

        ``cfg_scale != 1`` guides with the ``null_class``, on the first ``guide_channels`` output channels
        (None: all input channels; DiT's official sampler guides 3 of its 4 latent channels). ``options``
        are the sampler's own (e.g. ``eta`` for DDIM, ``S_churn`` for EDM's stochastic sampler).
        """
        sampler = self.check_sampler(sampler)
        model = maybe_guided(model, cfg_scale, null_class, model_kwargs, guide_channels)
        return self._run_sampler(
            sampler,
            model,
            shape,
            steps=steps,
            generator=generator,
            noise=noise,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            **options,
        )
