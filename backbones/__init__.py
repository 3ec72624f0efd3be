"""The model families. Importing this package registers every built-in backbone."""

from backbones import dis, dit, unet, uvit  # noqa: F401
