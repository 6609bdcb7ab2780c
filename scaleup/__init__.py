"""Scale-up: the lab's experiments on small transformers, with the same ``sparsity/`` core.

``gpt``          a nanoGPT-style decoder (presets micro, tiny, small, mid)
``tasks``        synthetic source and target token tasks, exact-match accuracy, retention
``pretrain``     pretraining on the source mixture, cached and resumable (safetensors)
``lora``         LoRA adapters, PEFT style (the baseline at a matched budget)
``compare``      the controlled benchmark's command line and sweep: full vs every sparse criterion vs LoRA
``bench_config`` its configuration (budgets, learning-rate grids) and the prepared set-up
``methods``      its methods by name: one registered object each (``method_base``, ``method_dense``,
                 ``method_mask``, ``method_dynamic``): how it selects, trains, counts its budget, is labelled
``layers``       layer naming facts of the GPT world's models (layer types, blocks)
``grid``         its grid of cells in two phases (lr sweep, then seeds), run serially or on workers
``finetune``     one benchmark cell: selection through the criteria registry, fine-tuning through ``fit``
``results``      its results store (``sparsity.sweep``), learning-rate choice and summary over seeds
``report``       its tables, verdict and figures
``memory``       peak-memory measurement on CPU and CUDA
``teacher_student``  which blocks need fine-tuning (the transformer version of lesson 1's probe)
"""
