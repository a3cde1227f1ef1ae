"""Expert networks: `small_unet`, the demo's SmallUNet; and paper-scale networks that load published
checkpoints unchanged: `ddpmpp`, EDM's DDPM++ (`SongUNet`); `nvlabs_precond`, NVlabs' `VPPrecond` and
`VEPrecond`; `vdm_unet`, the VDM U-Net. Import the submodule you need (nothing is imported here, so `import expertmerge` stays light).
"""


def count_parameters(net) -> int:
    """The number of values in a torch module's parameters."""
    return sum(p.numel() for p in net.parameters())
