import pytest

from detector.modeling.registry import Registry


def test_register_and_get() -> None:
    reg = Registry("TEST.KEY")

    @reg.register("A", "A-alias")
    def build_a() -> str:
        return "a"

    assert reg.get("A") is build_a and reg.get("A-alias") is build_a
    assert "A" in reg and len(reg) == 2 and list(reg) == ["A", "A-alias"]


def test_unknown_name_lists_known_names_and_closest() -> None:
    reg = Registry("MODEL.BACKBONE.CONV_BODY")
    reg.register("R-50-FPN")(object)
    reg.register("VGG-16")(object)
    with pytest.raises(
        KeyError, match=r"unknown name 'R-50-FNP'.*Did you mean 'R-50-FPN'.*R-50-FPN, VGG-16"
    ):
        reg.get("R-50-FNP")


def test_duplicate_registration_fails() -> None:
    reg = Registry("X")
    reg.register("a")(object)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(int)
