"""An episode of a policy as a GIF: matplotlib drawings of the classic-control
environments (no pygame needed), gymnax's own visualiser for the others it knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GYMNAX_VISUALIZER", "OWN_DRAWINGS", "episode_states", "render_gif"]

#: Environments drawn here with plain matplotlib.
OWN_DRAWINGS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCar-v0",
                "MountainCarContinuous-v0")
#: Environments drawn by ``gymnax.visualize.Visualizer`` without extra packages.
GYMNAX_VISUALIZER = ("Catch-bsuite", "Asterix-MinAtar", "Breakout-MinAtar",
                     "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar",
                     "Pong-misc", "PointRobot-misc", "MetaMaze-misc", "FourRooms-misc")


def episode_states(policy: Any, key: Any, max_steps: int, stochastic: bool = False
                   ) -> tuple[list[Any], np.ndarray]:
    """The environment states of one episode (at most ``max_steps`` steps), and the
    rewards, from one jitted ``lax.scan``."""
    import jax

    spec = policy.env

    def step(carry, k):
        obs, state, alive, memory = carry
        k_act, k_env = jax.random.split(k)
        k_act = k_act if stochastic else None
        if policy.recurrent:
            action, memory = policy.act(obs, k_act, carry=memory)
        else:
            action = policy.act(obs, k_act)
        obs2, state2, reward, term, trunc, _ = spec.env.step(k_env, state, action, spec.params)
        return (obs2, state2, alive & ~(term | trunc), memory), (state, reward, alive)

    @jax.jit
    def run(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = spec.env.reset(k_reset, spec.params)
        carry = (obs, state, jax.numpy.asarray(True), policy.init_carry())
        return jax.lax.scan(step, carry, jax.random.split(k_steps, max_steps))[1]

    states, rewards, alive = jax.device_get(run(key))
    n = int(np.sum(alive))
    return ([jax.tree.map(lambda x, i=i: x[i], states) for i in range(n)],
            np.asarray(rewards[:n], np.float64))


def _draw(ax: Any, name: str, s: Any, params: Any) -> None:
    """One frame of a classic-control environment, from its state."""
    from matplotlib.patches import Rectangle

    ax.clear()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    if name == "CartPole-v1":
        lim = float(params.x_threshold) + 0.6
        x, th, pole = float(s.x), float(s.theta), 2 * float(params.length)
        ax.set(xlim=(-lim, lim), ylim=(-0.6, pole + 0.4))
        ax.axhline(0, color="0.6", lw=1)
        ax.add_patch(Rectangle((x - 0.25, -0.15), 0.5, 0.3, color="0.3"))
        ax.plot([x, x + pole * np.sin(th)], [0.0, pole * np.cos(th)], color="tab:orange",
                lw=5, solid_capstyle="round")
    elif name == "Pendulum-v1":
        th = float(s.theta)
        ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3))
        ax.plot([0, np.sin(th)], [0, np.cos(th)], color="tab:red", lw=6,
                solid_capstyle="round")
        ax.plot([0], [0], "ko")
    elif name == "Acrobot-v1":
        a, b = float(s.joint_angle1), float(s.joint_angle2)
        p1 = (np.sin(a), -np.cos(a))
        p2 = (p1[0] + np.sin(a + b), p1[1] - np.cos(a + b))
        ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2))
        ax.axhline(1.0, color="0.6", lw=1, ls="--")
        ax.plot([0, p1[0], p2[0]], [0, p1[1], p2[1]], color="tab:blue", lw=5, marker="o")
    else:  # MountainCar-v0, MountainCarContinuous-v0
        lo, hi = float(params.min_position), float(params.max_position)
        xs = np.linspace(lo, hi, 200)
        ax.set_aspect("auto")
        ax.set(xlim=(lo, hi), ylim=(0.0, 1.1))
        ax.plot(xs, np.sin(3 * xs) * 0.45 + 0.55, color="0.4")
        goal = float(params.goal_position)
        ax.plot([goal, goal], [np.sin(3 * goal) * 0.45 + 0.55, 1.05], color="tab:green")
        x = float(s.position)
        ax.plot([x], [np.sin(3 * x) * 0.45 + 0.55], "o", color="tab:red", ms=14)


def render_gif(policy: Any, key: Any, path: str | Path, max_steps: int,
               stochastic: bool = False, fps: int = 25) -> dict[str, Any]:
    """Write one episode of ``policy`` to the GIF ``path``; returns frames and return.

    Raises:
      ValueError: an environment that cannot be drawn, or a path not ending in ``.gif``.
      ImportError: matplotlib (or pillow) is not installed.
    """
    from matplotlib import animation
    from matplotlib.figure import Figure

    name, path = policy.env.name, Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"--render {path}: the file name must end in .gif")
    if name not in OWN_DRAWINGS + GYMNAX_VISUALIZER:
        raise ValueError(f"--render: no drawing for {name}; supported: "
                         f"{', '.join(OWN_DRAWINGS + GYMNAX_VISUALIZER)}")
    states, rewards = episode_states(policy, key, max_steps, stochastic)
    returns = np.cumsum(rewards)
    if name in GYMNAX_VISUALIZER:
        from gymnax.visualize import Visualizer

        Visualizer(policy.env.env, policy.env.params, states, returns).animate(str(path))
    else:
        fig = Figure(figsize=(5, 3.6))  # no pyplot: no GUI backend, no global state
        ax = fig.add_subplot()

        def frame(i: int) -> None:
            _draw(ax, name, states[i], policy.env.params)
            ax.set_title(f"{name}: step {i + 1}, return {returns[i]:.1f}")

        anim = animation.FuncAnimation(fig, frame, frames=len(states), interval=1000 / fps)
        anim.save(str(path), writer=animation.PillowWriter(fps=fps))
    return {"path": str(path), "frames": len(states), "return": float(returns[-1])
            if len(returns) else 0.0}
