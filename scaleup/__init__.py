"""Scale-up: the lab's experiments on small transformers, with the same ``sparsity/`` core.

``gpt``          a nanoGPT-style decoder (presets micro, tiny, small, mid)
``tasks``        synthetic source and target token tasks, exact-match accuracy, retention
``pretrain``     pretraining on the source mixture, cached and resumable (safetensors)
``lora``         LoRA adapters, PEFT style (the baseline at a matched budget)
``compare``      the controlled benchmark: full vs every sparse criterion vs LoRA
``teacher_student``  which blocks need fine-tuning (the transformer version of lesson 1's probe)
"""
