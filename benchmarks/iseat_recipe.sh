# The ISEAT experiments' shared recipe (sourced by iseat_compare.sh and iseat_seeds.sh): digits, 40 epochs, LR ×0.1
# at epochs 20 and 30 (ISEAT's λ switches on with the first decay), and the per-example vulnerability of 500
# training images read every 2 epochs. Defines `advtrain` (one thread) and `run DIR SETTINGS...`, which keeps a
# finished run (its eval.json exists) so a script can be rerun after a stop; EVAL_ATTACKS sets the test attacks.
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
common=(--config configs/digits.yaml --set train.epochs=40 --set "schedule.milestones=[20, 30]"
        --set vulnerability.every_epochs=2 --set vulnerability.size=500 --set "eval.attacks=[$EVAL_ATTACKS]"
        --quiet --overwrite)
run() { local dir=$1; shift; [ -f "$dir/eval.json" ] || advtrain train "${common[@]}" "$@" --out "$dir"; }
