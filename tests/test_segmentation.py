"""Segmentation (issue #14): dilated backbones + ASPP shapes, mIoU by hand, the VOC reader, the scenes
generator's determinism, backbone weights from a classifier checkpoint, one CPU training step."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latentstore.data.scenes import FASHION_MNIST_DIR, ItemSet, fashion_items, make_scenes
from latentstore.data.voc import (VOC_PALETTE, check_mask, is_voc_root, list_voc, load_voc_sample, read_mask,
                                  write_palette_png)
from latentstore.errors import BadImageError, UsageError
from latentstore.eval.segmentation import SegMetric, confusion_matrix, plot_predictions, write_metrics
from latentstore.models.deeplab import ASPP, SEG_ARCHS, build_seg, load_backbone_weights
from latentstore.models.resnet import build

TINY = dict(width=4, depth_scale=0.3)  # one block per stage: shapes only


# ------------------------------------------------------------------------------------------ models
def test_aspp_is_four_summed_atrous_classifiers():
    aspp = ASPP(16, 5)
    assert [c.dilation for c in aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(c.kernel_size == (3, 3) and c.padding == c.dilation and c.out_channels == 5 for c in aspp.branches)
    x = torch.randn(2, 16, 7, 7)  # smaller than every rate: taps land in the padding, the size is kept
    want = sum(c(x) for c in aspp.branches)
    assert torch.allclose(aspp(x), want, atol=1e-6) and aspp(x).shape == (2, 5, 7, 7)


@pytest.mark.parametrize("name", list(SEG_ARCHS))
def test_output_strides_and_shapes(name):
    latent = name.startswith("cresnet")
    net = build_seg(name, in_channels=16 if latent else 3, num_classes=11, **TINY)
    x = torch.randn(2, 16, 8, 8) if latent else torch.randn(2, 3, 64, 64)  # the same 64x64 image, either way
    if latent:  # cResNet-d: no downsampling at all; conv4_x and conv5_x atrous
        assert net.backbone.stage_strides == [1, 1, 1] and net.backbone.stage_dilations == [1, 2, 4]
    else:  # ResNet-d: output stride 8; conv4_x and conv5_x atrous
        assert net.backbone.stage_strides == [1, 2, 1, 1] and net.backbone.stage_dilations == [1, 1, 2, 4]
    assert net.backbone.forward_features(x).shape[-2:] == (8, 8)  # the latent's size / the image's 1/8
    assert net.forward_logits(x).shape == (2, 11, 8, 8)
    assert net(x).shape == (2, 11, 64, 64)  # upsampled to the image: 8x the latent
    assert not any(k.startswith("head.") for k in net.backbone.state_dict())


def test_classification_strides_unchanged_and_bad_output_stride():
    assert build("resnet50", **TINY).stage_dilations == [1, 1, 1, 1]
    assert build("resnet50", output_stride=16, **TINY).stage_dilations == [1, 1, 1, 2]
    assert build("cresnet51", in_channels=8, output_stride=2, **TINY).stage_dilations == [1, 1, 2]
    with pytest.raises(ValueError):
        build("resnet50", output_stride=2, **TINY)


def test_segmentation_flops_in_the_table():
    from latentstore.models.flops import format_flop_table, seg_gflops
    g = {n: seg_gflops(n, 64, C=8, num_classes=11) for n in SEG_ARCHS}
    assert 0 < g["cresnet39d"] < g["cresnet51d"] < g["cresnet72d"] and 0 < g["resnet50d"] < g["resnet71d"]
    cs = (8, 16, 32)  # a table as `flops --json` prints it: string keys for C
    t = {"size": 64, "codec_width": 64, "codec": {str(C): {"encoder": 1.0, "decoder": 2.0} for C in cs},
         "rgb": {"resnet50": 4.0}, "latent": {"cresnet51": {C: 3.0 for C in cs}},
         "seg": {"num_classes": 11, "rgb": {"resnet50d": g["resnet50d"]},
                 "latent": {"cresnet51d": {str(C): g["cresnet51d"] for C in cs}}}}
    t["codec"] = {int(k): v for k, v in t["codec"].items()}  # as test_cli_misc does for the classification part
    text = format_flop_table(t)
    assert "decoder + ResNet-50-d (the reconstruction) vs cResNet-51-d" in text
    assert f"{2 + g['resnet50d']:7.2f} vs {g['cresnet51d']:6.2f}" in text


def _classifier_run(tmp_path, name="cresnet39", cin=8):
    from latentstore_train.checkpoint import save_checkpoint
    torch.manual_seed(1)
    clf = build(name, in_channels=cin, num_classes=5, **TINY)
    for m in clf.modules():  # BN statistics too, so the test sees buffers travel
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    opt = torch.optim.SGD(clf.parameters(), lr=0.1)
    save_checkpoint(str(tmp_path), 3, clf, opt, torch.Generator(), {"model": name, "width": 4})
    return clf


def test_backbone_weights_from_a_classification_checkpoint(tmp_path):
    clf = _classifier_run(tmp_path)
    net = build_seg("cresnet39d", in_channels=8, num_classes=3, **TINY)
    r = load_backbone_weights(net, str(tmp_path))  # the run directory, as `train classify` leaves it
    assert r.skipped_head == ["head.2.bias", "head.2.weight"] and not (r.missing or r.unexpected or r.mismatched)
    ref = {k: v for k, v in clf.state_dict().items() if not k.startswith("head.")}
    assert r.loaded == len(ref)
    assert all(torch.equal(v, ref[k]) for k, v in net.backbone.state_dict().items())
    with pytest.raises(UsageError, match="shape mismatch"):  # another width
        load_backbone_weights(build_seg("cresnet39d", in_channels=8, width=8, depth_scale=0.3),
                              str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(UsageError, match="a cresnet39 classifier"):
        load_backbone_weights(build_seg("cresnet51d", in_channels=8, **TINY), str(tmp_path))
    with pytest.raises(UsageError, match="no classification checkpoint"):
        load_backbone_weights(net, str(tmp_path / "nothing"))


@pytest.mark.parametrize("name,shape", [("cresnet51d", (2, 8, 4, 4)), ("resnet50d", (2, 3, 32, 32))])
def test_one_training_step_on_cpu(name, shape):
    torch.manual_seed(0)
    net = build_seg(name, in_channels=shape[1], num_classes=4, **TINY)
    x = torch.randn(shape)
    y = torch.randint(0, 4, (2, 32, 32))
    y[:, :4] = 255  # void pixels: no loss, no gradient
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in net.parameters()]
    logits = net(x)  # (2, 4, 32, 32)
    loss = F.cross_entropy(logits, y.long(), ignore_index=255)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and logits.shape == (2, 4, 32, 32)
    assert all(p.grad is not None for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    y_all_void = torch.full_like(y, 255)  # an image with nothing labelled contributes nothing (not NaN)
    assert F.cross_entropy(net(x), y_all_void.long(), ignore_index=255, reduction="sum").item() == 0


# ------------------------------------------------------------------------------------------ metric
# Hand-checked, 3 classes, 255 = ignore. Pixels as (target, prediction), the ignored one left out:
#   (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,0)       [the (255, 2) pixel is not counted at all]
# confusion (rows target, cols pred): [[1,1,0],[1,2,0],[1,0,1]]
#   class 0: TP 1, FP 3-1 = 2, FN 2-1 = 1 -> 1/4 = 0.25
#   class 1: TP 2, FP 3-2 = 1, FN 3-2 = 1 -> 2/4 = 0.50
#   class 2: TP 1, FP 1-1 = 0, FN 2-1 = 1 -> 1/2 = 0.50   (1/3 if the ignored pixel counted as a false positive)
#   mIoU = (0.25 + 0.5 + 0.5) / 3 = 41.667 %, pixel accuracy 4/7 = 57.143 %
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])


def test_miou_against_a_hand_checked_example():
    assert confusion_matrix(PRED, TARGET, 3).tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    m = SegMetric(3, ["bg", "a", "b"])
    m.update(PRED[None], TARGET[None])
    r = m.compute()
    assert [c["iou"] for c in r["per_class"]] == pytest.approx([25.0, 50.0, 50.0])
    assert r["miou"] == pytest.approx(125 / 3) and r["pixel_accuracy"] == pytest.approx(400 / 7)
    assert r["pixels"] == 7
    # logits in, two batches in: the same matrix
    m2 = SegMetric(3)
    logits = F.one_hot(PRED, 3).permute(2, 0, 1).float()[None]  # (1, 3, 2, 4)
    m2.update(logits[..., :1, :], TARGET[None, :1])
    m2.update(logits[..., 1:, :], TARGET[None, 1:])
    assert torch.equal(m2.conf, m.conf)


def test_absent_classes_are_left_out_and_false_alarms_count(tmp_path):
    m = SegMetric(5)  # classes 3 and 4 are in neither the target nor the prediction
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["per_class"][3]["iou"] is None and r["classes_in_mean"] == 3 and r["miou"] == pytest.approx(125 / 3)
    p = PRED.clone()
    p[0, 0] = 4  # predicted, never present: IoU 0, and it counts
    m.reset()
    m.update(p, TARGET)
    r = m.compute()
    assert r["per_class"][4]["iou"] == 0 and r["classes_in_mean"] == 4
    # class 0 loses its only TP: IoU 0 / 3; mIoU = (0 + 0.5 + 0.5 + 0) / 4
    assert r["miou"] == pytest.approx(25.0)
    j, c = write_metrics(r, str(tmp_path), extra={"model": "x"})
    d = json.load(open(j))
    assert d["model"] == "x" and d["per_class"][3]["iou"] is None
    rows = open(c).read().splitlines()
    assert rows[0] == "class_id,class,iou,gt_pixels,pred_pixels"
    assert rows[4] == "3,3,,0,0" and rows[-1] == ",mean,25.0000,,"
    with pytest.raises(ValueError, match="out of range"):
        m.update(torch.zeros(2, 2), torch.full((2, 2), 7))


def test_prediction_grid_png(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 4:9], mask[0] = 1, 255
    rows = [{"image": rgb, "recon": rgb, "target": mask, "preds": {"cresnet51d": mask}, "label": "a"}]
    p = plot_predictions(rows, str(tmp_path / "grid.png"), ["background", "thing"], "t")
    assert Image.open(p).size[0] > 100


# ------------------------------------------------------------------------------------------ VOC
def _voc(root, ids=("2007_000001", "2007_000002", "2007_000003"), size=(20, 12)):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            os.path.join(root, "JPEGImages", i + ".jpg"))
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[2:6, 3:9], mask[0] = 15, 255  # a "person" and a void border
        write_palette_png(mask, os.path.join(root, "SegmentationClass", i + ".png"))
    open(os.path.join(root, "ImageSets/Segmentation/train.txt"), "w").write(f"{ids[0]}\n{ids[1]}\n")
    open(os.path.join(root, "ImageSets/Segmentation/val.txt"), "w").write(f"{ids[2]}\n")
    return root


def test_voc_reader_on_a_tiny_fixture(tmp_path):
    root = _voc(str(tmp_path / "VOCdevkit" / "VOC2012"))
    assert is_voc_root(root) and not is_voc_root(str(tmp_path))
    train = list_voc(root, "train")
    assert [os.path.basename(i) for i, _ in train] == ["2007_000001.jpg", "2007_000002.jpg"]
    assert list_voc(str(tmp_path), "val") == list_voc(root, "val")  # the directory the tarball unpacks to works too
    rgb, mask = load_voc_sample(*train[0])
    assert rgb.shape == (12, 20, 3) and mask.shape == (12, 20) and set(np.unique(mask)) == {0, 15, 255}
    assert Image.open(train[0][1]).mode == "P" and VOC_PALETTE[15].tolist() == [192, 128, 128]
    # DeepLab's two-column SBD list, given by name
    open(os.path.join(root, "ImageSets/Segmentation/train_aug.txt"), "w").write(
        "/JPEGImages/2007_000003.jpg /SegmentationClass/2007_000003.png\n")
    assert list_voc(root, "train_aug") == list_voc(root, "val")


def test_voc_bad_input_is_one_clear_line(tmp_path):
    root = _voc(str(tmp_path / "voc"))
    with pytest.raises(UsageError, match=r"split file not found \(splits here: train, val\)"):
        list_voc(root, "trainval")
    with pytest.raises(UsageError, match="not a VOC root"):
        list_voc(str(tmp_path), "train")
    os.remove(os.path.join(root, "JPEGImages", "2007_000002.jpg"))
    with pytest.raises(UsageError, match=r"1 listed file\(s\) missing .* first JPEGImages/2007_000002.jpg"):
        list_voc(root, "train")
    # a mask of the wrong size, and one with a label out of range: a reason each (a recorded reject)
    m = np.zeros((11, 20), np.uint8)
    write_palette_png(m, os.path.join(root, "SegmentationClass", "2007_000003.png"))
    with pytest.raises(BadImageError, match=r"mask is 20x11 but its image is 20x12"):
        load_voc_sample(*list_voc(root, "val")[0])
    m = np.zeros((12, 20), np.uint8)
    m[0, 0], m[1, 1], m[2, 2] = 21, 255, 20
    assert check_mask(m, (12, 20), 21) == "label(s) 21 out of range 0..20 (255 = ignore)"
    assert check_mask(m[:, :, None], (12, 20), 21).startswith("mask has shape")
    assert check_mask(np.minimum(m, 20), (12, 20), 21) is None
    Image.fromarray(np.zeros((12, 20, 3), np.uint8) + 7).save(tmp_path / "rgb.png")
    with pytest.raises(BadImageError, match="not in the VOC palette"):
        read_mask(str(tmp_path / "rgb.png"))


# ------------------------------------------------------------------------------------------ scenes
def _items(n=20):
    """Stand-in Fashion-MNIST: bright discs and squares of 10 classes on black, 28x28."""
    yy, xx = np.mgrid[:28, :28]
    imgs = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r = 6 + i % 7
        imgs[i] = np.where((yy - 14) ** 2 + (xx - 14) ** 2 < r * r, 120 + 6 * i, 0) if i % 2 else 0
        if i % 2 == 0:
            imgs[i, 14 - r: 14 + r, 14 - r: 14 + r] = 200
    return ItemSet(imgs, np.arange(n) % 10, [f"c{k}" for k in range(10)])


def _files(d):
    out = {}
    for base, _, files in os.walk(d):
        for f in files:
            out[os.path.relpath(os.path.join(base, f), d)] = open(os.path.join(base, f), "rb").read()
    return out


def test_scenes_are_deterministic_and_voc_shaped(tmp_path):
    items = {"train": _items(), "val": _items(10)}
    bgs = {s: [(f"{s}{k}", np.random.default_rng(k).integers(0, 255, (90, 120, 3), dtype=np.uint8))
               for k in range(2)] for s in ("train", "val")}
    kw = dict(size=64, items=items, backgrounds=bgs, progress=False)
    rec = make_scenes(str(tmp_path / "a"), 4, 2, seed=3, **kw)
    make_scenes(str(tmp_path / "b"), 4, 2, seed=3, **kw)
    make_scenes(str(tmp_path / "c"), 4, 2, seed=4, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 4 + 2 + 4 + 2 + 3 + 1 and a == b  # same seed: the same bytes
    assert a["JPEGImages/train_000000.jpg"] != c["JPEGImages/train_000000.jpg"]
    assert rec["num_classes"] == 11 and rec["class_names"][1] == "c0" and rec["config"]["seed"] == 3
    pairs = list_voc(str(tmp_path / "a"), "train")
    assert len(pairs) == 4 and len(list_voc(str(tmp_path / "a"), "val")) == 2
    labels = set()
    for img, msk in pairs:
        rgb, mask = load_voc_sample(img, msk, num_classes=11)  # sizes agree, labels 0..10
        assert rgb.shape == (64, 64, 3)
        labels |= set(np.unique(mask).tolist())
    assert 0 in labels and len(labels) >= 3  # background and items, 2-5 per scene
    # scene i does not depend on how many were asked for
    make_scenes(str(tmp_path / "d"), 2, 0, seed=3, **kw)
    assert _files(tmp_path / "d")["SegmentationClass/train_000001.png"] == a["SegmentationClass/train_000001.png"]
    with pytest.raises(UsageError, match="not empty"):
        make_scenes(str(tmp_path / "a"), 1, 1, seed=3, **kw)
    make_scenes(str(tmp_path / "a"), 1, 1, seed=3, overwrite=True, **kw)
    assert open(tmp_path / "a/ImageSets/Segmentation/train.txt").read() == "train_000000\n"


def test_scenes_on_the_offline_photos(tmp_path):
    rec = make_scenes(str(tmp_path / "s"), 2, 1, size=64, items={"train": _items(), "val": _items()},
                      progress=False)
    assert rec["photos"]["val"] and not set(rec["photos"]["val"]) & set(rec["photos"]["train"])


def test_scenes_without_fashion_mnist_say_how_to_get_it(tmp_path):
    with pytest.raises(UsageError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_items("train", root=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist not installed")
def test_scenes_from_real_fashion_mnist(tmp_path):
    rec = make_scenes(str(tmp_path / "s"), 3, 2, size=64, seed=1, progress=False)
    assert rec["class_names"][1:] == fashion_items("val").class_names and rec["num_classes"] == 11
    for img, msk in list_voc(str(tmp_path / "s"), "val"):
        assert load_voc_sample(img, msk, 11)[1].max() <= 10
