"""Synthetic data: analytic shapes, a ray caster, and the procedural object category."""
