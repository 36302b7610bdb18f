"""What the three task scripts share, one question per module:

    settings       the flags: typed, checked dataclasses built once at start-up
    run_dir        a run directory: refusing to destroy one, recording settings, honest --resume
    device         where tensors live and in which precision
    distributed    processes under torchrun: who writes, each process's share of the work
    model_setup    the GPT-2, tokenizer and fine-tuning strategy the settings ask for
    optimization   AdamW parameter groups and learning-rate schedules
    checkpoints    saving and loading checkpoints, their identity, random-number state
    loop           the training loop: epochs, optimizer steps, the best epoch, faults
    signals        stopping cleanly on SIGINT and SIGTERM
    run_log        metrics.jsonl and curves.png
    inference      scoring a dataset in batches
    course_files   every reader and writer of the course's files
    metrics        classification and sonnet metrics
    hand_in        is a predictions folder complete and correct for handing in?
    ensemble       an ensemble's runs, rebuilt from their records, and its vote
    compare        finished runs grouped over seeds: the comparison table and dev curves
    sweep          sweeps and Optuna searches over the task scripts

Nothing is imported here, so `evaluation.py` and `prepare_submit.py` can use `course_files`, `metrics` and
`hand_in` without loading torch.
"""
