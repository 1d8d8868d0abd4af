"""The synthetic world: pybullet scenes rendered on the CPU with their ground truth."""
