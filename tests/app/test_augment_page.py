"""AppTest of the Augment page: presets fill the controls, the grid follows them, config is saved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnnlab.config import AUGMENT_PRESETS, AugmentConfig, DataConfig

PAGE = "pages/augment.py"


def grid(at) -> list[list[tuple[str, str]]]:
    """Rows of the preview grid as (caption, media url) pairs; the url hashes the image bytes."""
    return [[(i.caption, i.url) for i in el.proto.imgs] for el in at.get("image")]


def test_without_data_it_previews_the_demo_photos(workspace: Path, fresh_app) -> None:
    at = fresh_app(PAGE)
    assert not at.exception and not at.error
    rows = grid(at)
    assert [m.value for m in at.markdown if m.value in ("**china**", "**flower**")] == [
        "**china**",
        "**flower**",
    ]
    assert [r[0][0] for r in rows] == ["validation", "validation"]
    assert all(len(r) == 6 for r in rows)  # the validation view + 5 augmented draws
    assert any("demo photos" in c.value for c in at.caption)
    # the page creates the run config and stores the augmentation in it
    assert at.session_state["run_config"].augment == AugmentConfig()
    assert at.selectbox(key="a_preset").value == "light"  # the defaults are the light preset


def test_preset_fills_controls_and_config(workspace: Path, fresh_app) -> None:
    at = fresh_app(PAGE)
    at.selectbox(key="a_preset").set_value("strong").run()
    assert not at.exception
    strong = AUGMENT_PRESETS["strong"]
    assert at.slider(key="a_rotation").value == strong.rotation
    assert at.slider(key="a_crop").value == (strong.crop_scale_min, strong.crop_scale_max)
    assert at.session_state["run_config"].augment == strong

    at.slider(key="a_rotation").set_value(5.0).run()  # moving a control leaves the preset
    assert at.selectbox(key="a_preset").value == "custom"
    assert at.session_state["run_config"].augment == dataclasses.replace(strong, rotation=5.0)


def test_grid_uses_the_chosen_data_and_follows_the_controls(
    workspace: Path, colours_dir: Path, fresh_app
) -> None:
    at = fresh_app(
        PAGE,
        dataset_path=str(colours_dir),
        data_config=DataConfig(path=str(colours_dir), image_size=24),
    )
    assert not at.exception
    assert at.select_slider(key="a_size").value == 24  # seeded from the Data page's choice
    rows = grid(at)
    assert [r[0][0] for r in rows] == ["validation"] * 3
    names = [m.value for m in at.markdown if m.value.startswith("**")]
    assert names == ["**blue**", "**green**", "**red**"]

    # preset "none": every training draw is the unchanged image (same bytes, same url)
    at.selectbox(key="a_preset").set_value("none").run()
    for row in grid(at):
        assert len({url for _, url in row}) == 1

    at.selectbox(key="a_preset").set_value("strong").run()
    strong = grid(at)
    assert all(len({url for _, url in row[1:]}) > 1 for row in strong)  # draws differ per copy

    at.toggle(key="a_compare").set_value(False).run()
    assert all(len(r) == 5 and r[0][0] == "train #1" for r in grid(at))

    next(b for b in at.button if b.label == "New random draws").click().run()
    assert grid(at)[0] != [p for p in strong[0][1:]]

    at.select_slider(key="a_size").set_value(48).run()
    assert at.session_state["data_config"].image_size == 48
    assert at.session_state["run_config"].data.image_size == 48
    assert not at.exception and not at.error


def test_every_class_is_previewed_page_by_page(workspace: Path, fresh_app) -> None:
    from PIL import Image

    root = workspace / "seven"
    names = [f"class{i}" for i in range(7)]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (12, 12), (30 * i, 20 * j, 90)).save(root / name / f"{j}.png")
    at = fresh_app("pages/augment.py", dataset_path=str(root))
    assert not at.exception

    def shown() -> list[str]:
        return [m.value.strip("*") for m in at.markdown if m.value.startswith("**class")]

    assert shown() == names[:4]
    at.number_input(key="a_page").set_value(2).run()
    assert not at.exception and shown() == names[4:]
