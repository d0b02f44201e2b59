# Sourced by the sbatch scripts of this folder: the study, the command's options, and the follow-up job.
# Edit these five lines (or export them before sbatch: sbatch --export=ALL,MAPS=... script.sbatch).
MAPS=${MAPS:-/path/to/study/MAPS}                 # the MAPS folder (on a file system every node sees)
GROUP=${GROUP:-test}                              # the data group
NAME=${NAME:-run1}                                # the interpretation's NAME
OPTIONS=${OPTIONS:-"gradients --selection_metrics loss --batch_size 8 -np 8 --save_individual"}
MAX_JOBS=${MAX_JOBS:-10}                          # this job and its follow-ups, at most

# --continue on every job: the first starts from the beginning, a follow-up resumes from the checkpoint that
# the SIGTERM sent before the time limit (#SBATCH --signal) made the run write.
COMMAND="-m maps_interpret $MAPS $GROUP $NAME $OPTIONS --continue"

# After the run: if it stopped with a checkpoint (time limit), submit this script again, to start when this
# job has ended; a finished run (exit 0) or an error (exit 1, 2) submits nothing.
follow_up() {
    local status=$1 script=$2
    local staging="$MAPS/.maps-interpret-staging/$GROUP-$NAME"
    if [ "$status" -ne 0 ] && ls "$staging"/checkpoint-*.json >/dev/null 2>&1; then
        local count=${JOB_COUNT:-1}
        if [ "$count" -lt "$MAX_JOBS" ]; then
            echo "stopped with a checkpoint in $staging: submitting follow-up job $((count + 1)) of at most $MAX_JOBS"
            sbatch --dependency="afterany:${SLURM_JOB_ID}" --export="ALL,JOB_COUNT=$((count + 1))" "$script"
        else
            echo "stopped with a checkpoint, but $MAX_JOBS jobs have run: resume by hand with sbatch $script"
        fi
    fi
    return "$status"
}
