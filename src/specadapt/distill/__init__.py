"""Draft distillation for speculative decoding: AdaSPEC and DistillSpec, and measuring drafts.

Modules: :mod:`.train` (losses, the Trainer, the whole run: ``specadapt distill``),
:mod:`.data` (training pairs and held-out prompts, tokenised), :mod:`.teacher_cache`
(the target's top-k distributions, computed once), :mod:`.shallow` (drafts cut from the
target's first layers), :mod:`.eval_draft` (a draft's acceptance: ``specadapt eval-draft``).
docs/distill.md describes the commands.
"""
