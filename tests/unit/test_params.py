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
        (lambda r: r["base"].update(learning_rate=0), "`base.learning_rate`"),
        (lambda r: r["base"].update(epochs="ten"), "`base.epochs`"),
        (lambda r: r["base"].update(augment="yes"), "`base.augment`"),
        (lambda r: r["mixture"].update(routing="fuzzy"), "`mixture.routing`"),
        (lambda r: r["train"].update(precision="fp8"), "`train.precision`"),
        (lambda r: r["data"].update(val_size=0), "`data.val_size`"),
        (lambda r: r["net"].update(width=0), "`net.width`"),
        (lambda r: r["net"].update(whitten=True), "`net.whitten`"),
        (lambda r: r["base"].update(optimizer="adam"), "`base.optimizer`"),
        (lambda r: r["base"].update(schedule="step"), "`base.schedule`"),
        (lambda r: r["base"].pop("momentum"), "`base.momentum`"),
        (lambda r: r["router"].update(init_from_base=False), "`router.freeze_trunk`"),
        (lambda r: r["base"].update(init_from_base=True), "`base.init_from_base`"),
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

    from hmoe.params import NetParams

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(NetParams))
    del raw_params["gates"]["hidden"]
    with pytest.raises(ParamsError, match=r"missing key `gates\.hidden`"):
        parse_params(raw_params)
