import pytest

from hmoe.params import ParamsError, flatten, load_params, parse_params
from tests.conftest import ROOT


def test_repository_params_parse():
    p = load_params(ROOT / "params.yaml")
    assert p.groups.names == ("artificial", "natural")
    assert p.groups.class_ids("artificial") == (0, 1, 8, 9)
    assert p.groups.group_of_label() == (0, 0, 1, 1, 1, 1, 1, 1, 0, 0)


def test_three_groups_are_a_valid_partition(raw_params):
    raw_params["groups"] = {
        "vehicles": ["airplane", "automobile", "ship", "truck"],
        "pets": ["cat", "dog"],
        "wild": ["bird", "deer", "frog", "horse"],
    }
    p = parse_params(raw_params)
    assert p.groups.names == ("vehicles", "pets", "wild")
    assert p.groups.group_of_label()[5] == 1


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.update(sede=1), "`sede`"),
        (lambda r: r["base"].update(epoch=3), "`base.epoch`"),
        (lambda r: r["gates"].update(learnig_rate=0.1), "`gates.learnig_rate`"),
        (lambda r: r["base"].update(epochs=0), "`base.epochs`"),
        (lambda r: r["gates"].update(epochs=-1), "`gates.epochs`"),
        (lambda r: r["router"].update(batch_size=0), "`router.batch_size`"),
        (lambda r: r["recipe"].update(batch_size=0), "`recipe.batch_size`"),
        (lambda r: r["base"].update(learning_rate=0), "`base.learning_rate`"),
        (lambda r: r["base"].update(epochs="ten"), "`base.epochs`"),
        (lambda r: r["base"].update(lookahead="yes"), "`base.lookahead`"),
        (lambda r: r["recipe"].update(translate=-1), "`recipe.translate`"),
        (lambda r: r["specialists"].update(start="head2"), "`specialists.start`"),
        (lambda r: r["router"].update(epochs=0), "`router.epochs`"),
        (lambda r: r["base"].update(start="base"), "`base.start`"),
        (lambda r: r["router"].pop("epochs"), "`router.epochs`"),
        (lambda r: r.pop("router"), "`router`"),
        (lambda r: r.update(groups="auto"), "`groups: N`"),
        (lambda r: r["mixture"].update(routing="fuzzy"), "`mixture.routing`"),
        (lambda r: r["gates"].update(kind="soft"), "`gates.kind`"),
        (lambda r: r["gates"].update(kind="fixed", inputs="features"), "no effect with `gates"),
        (lambda r: r["gates"].update(kind="constant", inputs="both"), "no effect with `gates"),
        (lambda r: r["gates"].update(kind="fixed", fit_on="train"), "nothing is fitted"),
        (lambda r: r["specialists"].update(match_steps="yes"), "`specialists.match_steps`"),
        (lambda r: r["train"].update(precision="fp8"), "`train.precision`"),
        (lambda r: r["data"].update(val_size=0), "`data.val_size`"),
        (lambda r: r["net"].update(width=0), "`net.width`"),
        (lambda r: r["net"].update(whitten=True), "`net.whitten`"),
        (lambda r: r["base"].update(optimizer="adam"), "`base.optimizer`"),
        (lambda r: r["recipe"].update(schedule="step"), "`recipe.schedule`"),
        (lambda r: r["recipe"].pop("momentum"), "`recipe.momentum`"),
        (lambda r: r["router"].update(freeze_trunk=False), "`router.freeze_trunk`"),
        (lambda r: r["base"].update(init_from_base=True), "`base.init_from_base`"),
        (lambda r: r["mixture"].update(router_fusion="mean"), "`mixture.router_fusion`"),
        (lambda r: r["mixture"].update(tta=3), "`mixture.tta`"),
        (lambda r: r["mlflow"].update(experiment=""), "`mlflow.experiment`"),
        (lambda r: r["groups"]["natural"].append("airplane"), "'airplane'"),
        (lambda r: r["groups"]["natural"].remove("frog"), "frog"),
        (lambda r: r["groups"]["natural"].append("unicorn"), "unicorn"),
        (lambda r: r.update(groups={"all": list(r["groups"]["artificial"])}), "at least 2"),
        (lambda r: r.pop("seed"), "`seed`"),
    ],
)
def test_bad_params_name_the_key(raw_params, mutate, needle):
    mutate(raw_params)
    with pytest.raises(ParamsError, match=None) as err:
        parse_params(raw_params)
    assert needle in str(err.value)


def test_params_are_frozen(raw_params):
    p = parse_params(raw_params)
    with pytest.raises(AttributeError):
        p.base.epochs = 3  # type: ignore[misc]


def test_flatten_gives_dotted_keys(raw_params):
    flat = flatten(parse_params(raw_params))
    assert flat["base.epochs"] == raw_params["base"]["epochs"]
    assert flat["groups.artificial"] == "airplane,automobile,ship,truck"
    assert flat["data.limit"] is None


def test_every_key_is_required_so_params_yaml_is_the_only_source_of_defaults(raw_params):
    import dataclasses

    from hmoe.params import NetArch, RecipeParams

    for cls in (NetArch, RecipeParams):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))
    del raw_params["gates"]["hidden"]
    with pytest.raises(ParamsError, match=r"missing key `gates\.hidden`"):
        parse_params(raw_params)


# One non-default value for every leaf key of params.yaml (a key added there without
# one here fails the coverage test below), and what it must do: move the effective
# params (what the steps read, MLflow logs and the sweep keys on), or be refused.
NON_DEFAULT = {
    "seed": 7,
    "data.source": "../shared/cifar10/cifar10-jpeg.zip",
    "data.val_size": 4000,
    "data.gate_size": 4000,
    "data.limit": 20000,
    "data.split_seed": 1,
    "groups.artificial": ["airplane", "automobile", "ship", "truck", "frog"],
    "groups.natural": ["bird", "cat", "deer", "dog", "horse"],
    "net.width": 32,
    "net.bn_bias_lr": 16.0,
    "net.bn_momentum": 0.6,
    "net.logit_scale": 0.2,
    "recipe.batch_size": 256,
    "recipe.learning_rate": 0.5,
    "recipe.momentum": 0.9,
    "recipe.weight_decay": 0.005,
    "recipe.label_smoothing": 0.1,
    "recipe.translate": 0,
    "recipe.lookahead": False,
    "base.epochs": 1,
    "specialists.epochs": 2,
    "specialists.start": "base",
    "specialists.dustbin": 0.5,
    "specialists.distill": 0.5,  # refused without a temperature: see REFUSED
    "specialists.match_steps": True,
    "router.epochs": 2,
    "router.start": "scratch",
    "router.lookahead": True,
    "gates.kind": "constant",
    "gates.epochs": 5,
    "gates.batch_size": 128,
    "gates.learning_rate": 0.01,
    "gates.hidden": 8,
    "gates.patience": 2,
    "gates.inputs": "both",
    "gates.fit_on": "train",
    "controls.second_base": True,
    "mixture.routing": "hard",
    "mixture.tta": 0,
    "mixture.router_fusion": "none",
    "train.precision": "float32",
    "train.jit_compile": True,
    "train.steps_per_execution": 4,
    "train.distribute": "none",
    "mlflow.experiment": "other",
    "mlflow.register": False,
}
REFUSED = {
    "specialists.distill": "needs `specialists.temperature`",
    # the default gates (fixed) see nothing and fit nothing
    "gates.inputs": "no effect with `gates.kind: fixed`",
    "gates.fit_on": "nothing is fitted",
}


def _leaves(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if (isinstance(value, dict) and key != "groups") or (key == "groups" and prefix):
            out |= _leaves(value, f"{prefix}{key}.")
        elif isinstance(value, dict):
            out |= {f"groups.{g}": members for g, members in value.items()}
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set(raw: dict, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    for key in path:
        raw = raw[key]
    raw[leaf] = value


def test_every_params_key_has_a_non_default_value_here(raw_params):
    assert set(_leaves(raw_params)) == set(NON_DEFAULT)
    assert all(NON_DEFAULT[k] != v for k, v in _leaves(raw_params).items())
    # issue 22: a params.yaml a newcomer can read (45, plus issue 43's gates.kind and
    # specialists.match_steps)
    assert len(NON_DEFAULT) <= 47


@pytest.mark.parametrize("key", sorted(NON_DEFAULT))
def test_every_params_key_moves_the_effective_params_or_is_refused(raw_params, key):
    before = flatten(parse_params(raw_params))
    for k in [g for g in NON_DEFAULT if g.startswith("groups.")] if "groups." in key else [key]:
        _set(raw_params, k, NON_DEFAULT[k])  # a partition moves as a whole
    if key in REFUSED:
        with pytest.raises(ParamsError, match=REFUSED[key]):
            parse_params(raw_params)
        return
    after = flatten(parse_params(raw_params))
    changed = {k for k in after if after.get(k) != before.get(k)}
    if key.startswith("recipe."):  # every network that does not override it moves
        leaf = key.split(".", 1)[1]
        overridden = {n for n in ("base", "specialists", "router") if leaf in raw_params[n]}
        expected = {f"{n}.{leaf}" for n in ("base", "specialists", "router")} - {
            f"{n}.{leaf}" for n in overridden
        }
        assert expected <= changed, (key, changed)
    elif key.startswith("groups."):
        assert {"groups.artificial", "groups.natural"} & changed
    else:
        assert key in changed, (key, changed)


def test_a_network_override_moves_only_that_network(raw_params):
    raw_params["specialists"]["learning_rate"] = 0.2
    p = parse_params(raw_params)
    assert p.specialists.learning_rate == 0.2
    assert p.base.learning_rate == p.router.learning_rate == p.recipe.learning_rate


def test_a_temperature_without_distillation_is_refused_with_its_reason(raw_params):
    raw_params["specialists"]["temperature"] = 3.0
    with pytest.raises(ParamsError, match=r"no effect while `specialists\.distill` is 0"):
        parse_params(raw_params)
    raw_params["specialists"]["distill"] = 0.5
    assert parse_params(raw_params).specialists.temperature == 3.0


def _dvc_set_params(path, overrides):
    """What `dvc exp run -S` does to params.yaml: DVC's own round trip (ruamel, Hydra's
    override grammar, lists replaced whole, written back in block style).
    """
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, overrides)
    return path.read_text()


def test_params_yaml_is_in_the_form_dvc_writes_back(tmp_path):
    """Setting a key to its own value leaves the file byte for byte: any flow list,
    `null` or comment that DVC's dump moves would show up in every experiment's diff.
    """
    committed = (ROOT / "params.yaml").read_text()
    copy = tmp_path / "params.yaml"
    copy.write_text(committed)
    assert _dvc_set_params(copy, ["seed=42", "data.limit=null"]) == committed


def test_an_experiments_params_diff_is_only_the_keys_it_set(tmp_path):
    import difflib

    committed = (ROOT / "params.yaml").read_text()
    copy = tmp_path / "params.yaml"
    copy.write_text(committed)
    changed = _dvc_set_params(copy, ["data.source=elsewhere", "groups.natural=[bird,cat,deer]"])
    diff = difflib.unified_diff(committed.splitlines(), changed.splitlines(), lineterm="", n=0)
    lines = [d for d in diff if d[:1] in "+-" and d[:3] not in ("---", "+++")]
    removed = sorted(d[1:].split("#")[0].strip() for d in lines if d.startswith("-"))
    added = [d[1:].split("#")[0].strip() for d in lines if d.startswith("+")]
    assert removed == ["- dog", "- frog", "- horse", "source: keras"], lines
    assert added == ["source: elsewhere"], lines
