"""Model configuration, signatures and the Triton-layout model repository."""
