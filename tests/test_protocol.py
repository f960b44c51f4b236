"""The protocol's shared rules, each written once: settings, α, the cap on M, which PGD
objective a method is attacked with, and which PGD requests a run recorded itself."""

import pytest

from clustr_lib import protocol


def test_settings_resolve_per_dataset_entries_and_refuse_unknown_keys():
    s = protocol.settings("svhn", {"width": 8})
    assert s["width"] == 8 and s["alpha"] == 13.0 and s["alpha_qtrades"] == 10.0
    assert s["magnet_epochs"] == 60 and s["qtrades_lambda"] == 9.7
    assert protocol.settings("cifar10")["magnet_epochs"] == 30
    with pytest.raises(ValueError, match="widht"):
        protocol.settings("cifar10", {"widht": 8})
    with pytest.raises(ValueError, match="unknown method"):
        protocol.check_method("adversarial")


def test_alpha_is_the_qtrades_one_only_for_clustr_qtrades():
    s = protocol.settings("svhn")
    assert protocol.magnet_alpha(s, "clustr_qtrades") == 10.0
    assert protocol.magnet_alpha(s, "clustr") == protocol.magnet_alpha(s, "magnet") == 13.0


def test_m_is_capped_by_the_clusters_of_the_other_classes():
    s = protocol.settings("cifar10")  # M = 12, K = 2
    assert protocol.clusters_per_batch(s, 10) == 12  # 1 + 9·2 = 19 ≥ 12
    assert protocol.clusters_per_batch(s, 3) == 5  # 1 + 2·2
    assert protocol.clusters_per_batch({**s, "clusters_per_class": 1}, 2) == 2


def test_the_papers_objective_is_cross_entropy_for_a_cross_entropy_network():
    assert protocol.attack_objective("trades", "paper") == "ce"
    assert protocol.attack_objective("trades", "magnet") is None
    assert protocol.attack_objective("nominal", "margin") == "margin"
    for method in protocol.CLUSTER_METHODS:
        assert protocol.attack_objective(method, "paper") == "paper"


def test_only_the_protocols_own_pgd_requests_count_as_recorded():
    s = protocol.settings("digits32", {"eval_size": 80, "pgd_restarts_per_pass": 1})
    at = protocol.at_protocol
    assert at(s, "clustr", protocol.pgd_params(s, "clustr", "paper"))
    assert at(
        s, "clustr", protocol.pgd_params(s, "clustr", "ce", steps=[20])
    )  # a subset of its steps
    assert at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", num_nearest=20))  # the tables' D
    assert at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", eps=8.0 / 255))
    assert not at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", eps=16 / 255))
    assert not at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", num_nearest=4))
    assert not at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", steps=[50]))
    assert not at(
        s, "clustr", protocol.pgd_params(s, "clustr", "margin")
    )  # not a protocol objective
    assert not at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", restarts=1))
    params = protocol.pgd_params(s, "clustr_qtrades", "magnet")
    assert params["alpha"] == 12.5 and params["objective"] == "magnet"
    assert protocol.pgd_params(s, "clustr", "ce")["rule"] == "official"  # the paper's first
    assert at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", rule="any_iterate"))
    assert not at(s, "clustr", protocol.pgd_params(s, "clustr", "ce", rule="any_restart"))


def test_bad_protocol_values_are_refused_before_any_work():
    for changes, message in [
        ({"qtrades_form": "exact"}, "qtrades_form"),
        ({"pgd_rules": ["best"]}, "pgd_rules"),
        ({"pgd_rules": []}, "pgd_rules"),
        ({"pgd_objectives": ["xent"]}, "pgd_objectives"),
        ({"magnet_milestones": [60, 30]}, "magnet_milestones"),
        ({"ce_milestones": [0]}, "ce_milestones"),
        ({"train_num_nearest": 0}, "train_num_nearest"),
        ({"num_nearest": 0}, "num_nearest"),
        ({"eval_size": -1}, "eval_size"),
        ({"magnet_epochs": -1}, "magnet_epochs"),
        ({"eps": 2.0}, "eps"),
        ({"seed_probability": "loss"}, "seed_probability"),
        ({"clusters_per_batch": 1}, "clusters_per_batch"),
    ]:
        with pytest.raises(ValueError, match=message):
            protocol.settings("cifar10", changes)


def test_the_recorded_study_names_our_variant_and_the_re_recording_the_official_protocol():
    v1 = protocol.settings("digits32", protocol.DIGITS32_STUDY["overrides"])
    official = protocol.settings("digits32", protocol.DIGITS32_OFFICIAL["overrides"])
    for key, ours in protocol.OUR_VARIANT.items():
        assert v1[key] == ours
    assert official["qtrades_form"] == "official" and official["pgd_rules"][0] == "official"
    assert official["train_num_nearest"] == 10 and official["magnet_milestones"] == [5, 8]


def test_the_default_shard_size_is_implied_and_another_one_is_named():
    settings = protocol.settings("cifar10")
    assert "shard_size" not in protocol.pgd_params(settings, "nominal", "ce")
    assert "shard_size" not in protocol.pgd_params(settings, "nominal", "ce", shard_size=500)
    other = protocol.settings("cifar10", {"shard_size": 100})
    assert protocol.pgd_params(other, "nominal", "ce")["shard_size"] == 100
    with pytest.raises(ValueError, match="shard_size"):
        protocol.settings("cifar10", {"shard_size": 0})
