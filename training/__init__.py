"""One training run of a task script, one question per module:

    settings       the settings every task script shares: typed, checked dataclasses built once at start-up
    run_dir        a run directory: refusing to destroy one, recording settings, honest --resume
    device         where tensors live and in which precision
    distributed    processes under torchrun: who writes, each process's share of the work
    model_setup    the GPT-2, tokenizer and fine-tuning strategy the settings ask for
    optimization   AdamW parameter groups and learning-rate schedules
    checkpoints    saving and loading checkpoints, their identity, random-number state
    loop           the training loop: epochs, optimizer steps, the best epoch, faults
    signals        stopping cleanly on SIGINT and SIGTERM
    run_log        metrics.jsonl and curves.png
    objectives     the classification losses the two classifying scripts share
    token_cache    tokenised datasets kept between runs
    inference      scoring a dataset in batches
    ensemble       an ensemble's runs, rebuilt from their records, and its vote
    summary        what a task script says when it ends: its runs, files and the next commands
    tensorboard_log  --tensorboard: metrics.jsonl's numbers as TensorBoard event files

The course's files and metrics are in `course/`, the flags in `flags.py`; sweeps and comparisons, which drive
the scripts from above, in `tools/`.
"""
