"""The numerics under BMRS: truncated-normal tail masses (``truncnorm``), the reduced free energy
Delta F of each prior (``reduction``), the reparameterised draw (``sampling``) and the elementwise
kernels ``torch.compile`` fuses (``fused``). Nothing here knows about networks."""
