"""SRPO stage-2 reinforcement learning: rewards, advantages, loss and the data contracts between them."""
