"""The model families. Importing this package registers every built-in backbone."""

from backbones import dis, dit, hourglass, unet, uvit  # noqa: F401
