#!/usr/bin/env bash
# Regenerate every table of docs/results.md (hours on 2 CPU cores; resumable: finished models are reused).
# Usage: bash scripts/results.sh [STEP...]
#   steps: splits robust-sweep default kaggle-random kaggle-honest pbc classical segmentation detection
#          agreement crossdomain adapt ood
set -euo pipefail
cd "$(dirname "$0")/.."
WBC=${WBC:-.venv/bin/wbc}
D=../shared/data
K=$D/blood-cells/dataset2-master/dataset2-master/images
MAP=$D/blood-cells/provenance/dataset2_source_map.csv
OUT=${OUT:-results}
steps=${*:-"splits robust-sweep default kaggle-random kaggle-honest pbc classical segmentation detection agreement crossdomain adapt ood"}
CLASSICAL=svm,random-forest,knn,mlp,naive-bayes,logistic-regression

for step in $steps; do case $step in
splits)  # committed split files (re-running reproduces them exactly)
  $WBC -q split --data $D/PBC_dataset_normal_DIB --dedup --val 0.15 --test 0.15 --seed 0 --out data/splits/pbc.csv
  $WBC -q split --data $K/TRAIN --data $K/TEST --val 0.2 --test 0.1 --seed 0 --out data/splits/kaggle_random.csv
  ;;
robust-sweep)  # the training recipe for robustness across labs, chosen on cross-domain validation (ADR 0014)
  .venv/bin/python scripts/robust_sweep.py --out $OUT/robust-sweep
  ;;
default)  # the bundled model: an ensemble of two PBC + Kaggle TRAIN models with the recipe of ADR 0014 (ADR 0015),
  # chosen on the validation splits, then refitted on train + val with the same recipe and budget (ADR 0016),
  # evaluated once on the held-out tests
  R="--data data/splits/pbc.csv --data data/splits/kaggle.csv --arch mobilenet_v2 --img-size 160 --crop 0.7
     --stain-norm reinhard --augment robust --lr 3e-4 --epochs 10 --patience 10 --class-weights --max-per-class 1500
     --monitor val_accuracy"
  [ -f runs/default/run.json ] || $WBC -q train $R --out runs/default
  # member b: the cap per class applies to each source, so Kaggle's augmented copies leave every PBC image in
  [ -f runs/default-b/run.json ] || $WBC -q train $R --cap-each-source --out runs/default-b
  # the validated twin: trained on the train splits only, so the val splits can choose it and calibrate it.
  # review threshold: the kept cells >= 95 % correct on the validation splits of both sources (docs/decisions/0011);
  # unknown threshold: 95 % of those validation cells pass as known (docs/decisions/0013)
  if [ ! -f runs/default-validated.safetensors ]; then
    $WBC ensemble runs/default runs/default-b --half --out runs/default-ensemble.safetensors
    $WBC -q calibrate --model runs/default-ensemble.safetensors --data data/splits/pbc.csv \
        --data data/splits/kaggle.csv --target-accuracy 0.95 --out runs/default-validated.safetensors
  fi
  for m in a b; do run=runs/default$([ $m = a ] || echo -b); mkdir -p $OUT/default/member-$m
    cp $run/run.json $run/history.csv $run/curves.png $OUT/default/member-$m/
    for s in pbc kaggle; do  # the choice (ADR 0015): each member and the ensemble on the validation splits
      $WBC -q evaluate --model $run --backend torch --data data/splits/$s.csv --split val --out $OUT/default/val/member-$m-$s
    done
  done
  for s in pbc kaggle; do
    $WBC -q evaluate --model runs/default-validated.safetensors --backend torch --data data/splits/$s.csv --split val \
        --out $OUT/default/val/ensemble-$s
  done
  # the final fit (ADR 0016): both members again on train + val (36 more Kaggle source cells, 15 % more PBC
  # cells), same recipe, seed and 10-epoch schedule, last epoch kept; the calibration is the validated twin's
  [ -f runs/refit-a/run.json ] || $WBC -q train $R --refit --out runs/refit-a
  [ -f runs/refit-b/run.json ] || $WBC -q train $R --refit --cap-each-source --out runs/refit-b
  $WBC ensemble runs/refit-a runs/refit-b --half --out runs/refit-ensemble.safetensors
  $WBC -q calibrate --model runs/refit-ensemble.safetensors --from-model runs/default-validated.safetensors \
      --out src/wbc/assets/default_model.safetensors
  # the int8 twin that `wbc` runs by default (docs/decisions/0009), activation ranges from the val splits' images
  $WBC export --format onnx-int8 --calibration data/splits/pbc.csv --calibration data/splits/kaggle.csv \
      --out src/wbc/assets/default_model.int8.onnx
  for m in a b; do run=runs/refit-$m; mkdir -p $OUT/default/refit-$m
    cp $run/run.json $run/history.csv $run/curves.png $OUT/default/refit-$m/
    # after the choice: each member's PBC test accuracy, for the accuracy/speed front (bench/pareto.py, ADR 0012)
    $WBC -q evaluate --model $run --backend torch --data data/splits/pbc.csv --out $OUT/default/members-test/member-$m-pbc
  done
  # no --model: the bundled model as `wbc` runs it, through its int8 twin (--backend auto, the shipped path)
  $WBC -q evaluate --data data/splits/pbc.csv --out $OUT/default/pbc-test
  $WBC -q evaluate --data data/splits/kaggle.csv --groups $MAP --out $OUT/default/kaggle-test
  ;;
kaggle-random)  # the papers' protocol: random 70/20/10 of TRAIN+TEST (augmented copies on both sides)
  $WBC -q compare --data data/splits/kaggle_random.csv --archs risodkar-cnn,asghar-cnn,mobilenet_v2,efficientnet_lite0 \
      --epochs 6 --img-size 128 --max-per-class 1000 --monitor val_accuracy --out $OUT/kaggle-random
  ;;
kaggle-honest)  # official TRAIN -> TEST, validation split off TRAIN by source image
  $WBC -q compare --data data/splits/kaggle.csv --groups $MAP --archs risodkar-cnn,asghar-cnn,mobilenet_v2,efficientnet_lite0 \
      --epochs 6 --img-size 128 --max-per-class 1000 --monitor val_accuracy --out $OUT/kaggle-honest
  ;;
pbc)  # PBC 8 classes, group-aware split after de-duplication; big backbones on a reduced budget
  $WBC -q compare --data data/splits/pbc.csv --archs risodkar-cnn,asghar-cnn,mobilenet_v2,efficientnet_lite0 \
      --epochs 6 --img-size 128 --class-weights --monitor val_accuracy --out $OUT/pbc
  $WBC -q compare --data data/splits/pbc.csv --archs mobilenet_v3_small --no-pretrained \
      --epochs 6 --img-size 128 --class-weights --monitor val_accuracy --out $OUT/pbc
  $WBC -q compare --data data/splits/pbc.csv --archs resnet50,inception_v3 --no-pretrained \
      --epochs 4 --img-size 96 --max-per-class 250 --class-weights --monitor val_accuracy --out $OUT/pbc-reduced
  # VGG16 has no BatchNorm: from random weights it stays at chance with lr 1e-3 (measured), so 1e-4
  $WBC -q compare --data data/splits/pbc.csv --archs vgg16 --no-pretrained --lr 1e-4 \
      --epochs 4 --img-size 96 --max-per-class 250 --class-weights --monitor val_accuracy --out $OUT/pbc-reduced
  ;;
classical)  # handcrafted features + scikit-learn, side by side with the CNN rows (same splits, same folders)
  $WBC -q compare --data data/splits/pbc.csv --archs $CLASSICAL --out $OUT/pbc
  $WBC -q compare --data data/splits/kaggle.csv --groups $MAP --archs $CLASSICAL --max-per-class 1000 --out $OUT/kaggle-honest
  ;;
segmentation)  # BCCD fields with exactly one annotated WBC: IoU of the segmented WBC with the box
  .venv/bin/python scripts/bccd_eval.py segmentation --out $OUT
  ;;
detection)  # all 364 annotated BCCD fields: WBC detection precision/recall at IoU >= 0.5
  .venv/bin/python scripts/bccd_eval.py detection --out $OUT
  ;;
agreement)  # wbc count vs the per-image labels of BCCD, on fields whose source cell no model trained on
  .venv/bin/python scripts/bccd_eval.py agreement --out $OUT
  ;;
crossdomain)  # train on one source, test on the other (needs the pbc and kaggle-honest steps)
  .venv/bin/python scripts/crossdomain.py --out $OUT/crossdomain
  # seed 1 and the seed-0 + seed-1 ensembles, on validation only (their rule for test rows was not met)
  .venv/bin/python scripts/ensemble_transfer.py --out $OUT/ensemble-transfer
  # label-free self-training after AdaBN (docs/decisions/0017), on validation only; test rows only if its rule adopts it
  .venv/bin/python scripts/selftrain_sweep.py --out $OUT/selftrain-sweep
  .venv/bin/python scripts/crossdomain.py --out $OUT/crossdomain --only pbc-only-robust+selftrain,kaggle-only-robust+selftrain
  ;;
adapt)  # few-shot adaptation of the robust PBC-only model (crossdomain step) to Kaggle/BCCD (5, 10, 20 cells per class)
  .venv/bin/python scripts/adapt_curve.py --eval-split val --out $OUT/adapt-val   # where --head's default was chosen
  .venv/bin/python scripts/adapt_curve.py --out $OUT/adapt
  .venv/bin/python scripts/adabn_minimum.py --out $OUT/adabn-minimum   # how few unlabelled cells wbc adapt takes
  ;;
ood)  # out-of-distribution images (red cells, platelets, background, non-microscopy): the unknown verdict
  # (docs/decisions/0013); the val half (with the val splits) chose the score, the test half reports it. The val
  # half is scored by the validated twin (default step): the bundled refit trained on the val splits' cells
  rm -rf runs/ood && .venv/bin/python scripts/make_ood_set.py runs/ood
  $WBC -q evaluate-ood --model runs/default-validated.safetensors --data data/splits/pbc.csv \
      --data data/splits/kaggle.csv --split val --ood runs/ood/val --out $OUT/ood/val
  $WBC -q evaluate-ood --data data/splits/pbc.csv --data data/splits/kaggle.csv --ood runs/ood/test --out $OUT/ood
  ;;
*) echo "unknown step $step" >&2; exit 2;;
esac; done
