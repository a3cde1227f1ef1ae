"""Paper-scale expert networks that load published checkpoints unchanged.

`ddpmpp`: EDM's DDPM++ (`SongUNet`) with `VPPrecond`; `vdm_unet`: the VDM U-Net. Import the
submodule you need (nothing is imported here, so `import expertmerge` stays light).
"""
