"""Evaluation on held-out views: scoring any method (trained fields, the teacher's EFT and VLDM
alone) with the paper's masked protocol, and comparison pictures."""
