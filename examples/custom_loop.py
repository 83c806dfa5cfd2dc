"""FIPO in a hand-written GRPO loop: no trainer, only PyTorch. Run: python examples/custom_loop.py"""
import torch

from swift_fipo import FIPOConfig
from swift_fipo.ops.loss import apply_fipo

GROUP, LENGTH, VOCAB, EOS = 16, 12, 6, 5


def main(rollouts: int = 6, iterations: int = 2) -> list[dict[str, float]]:
    torch.manual_seed(0)
    logits = torch.zeros(LENGTH, VOCAB, requires_grad=True)  # toy policy: one categorical per position
    optimizer, config, history = torch.optim.Adam([logits], lr=0.1), FIPOConfig(decay_rate=4.0), []
    for rollout in range(rollouts):
        with torch.no_grad():  # sample a group; everything after the first EOS is padding
            tokens = torch.distributions.Categorical(logits=logits).sample((GROUP, ))
            mask = (tokens == EOS).int().cumsum(-1).sub((tokens == EOS).int()) == 0
            old_logps = torch.log_softmax(logits, -1)[torch.arange(LENGTH), tokens]
        reward = ((tokens == 0) & mask).sum(-1).float()  # reward: how many 0s before EOS
        advantages = (reward - reward.mean()) / (reward.std() + 1e-6)
        for iteration in range(iterations):  # pass 2+ reuses the rollout off-policy: FIPO acts there
            log_ratio = torch.log_softmax(logits, -1)[torch.arange(LENGTH), tokens] - old_logps
            ratio, a = log_ratio.exp(), advantages[:, None]
            per_token_loss = -torch.min(ratio * a, ratio.clamp(1 - 0.2, 1 + 0.28) * a)  # DAPO clip
            loss, stats = apply_fipo(per_token_loss, log_ratio, mask, advantages, config, reduction='token_mean')
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append({'rollout': rollout, 'iteration': iteration, 'reward': reward.mean().item(),
                            **{f'fipo/{k}': v.item() for k, v in stats.summary.items()}})
            print({k: round(v, 3) for k, v in history[-1].items() if k in ('reward', 'fipo/influence_weight_mean')})
    return history


if __name__ == '__main__':
    main()
