"""syn_give_up_s -> the TCP_SYNCNT the program sets (syn_give_up.syn_retries_for_give_up) and its checks
in the desired state."""

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import desired, syn_give_up


@pytest.mark.parametrize(
    "give_up, rto, linear, retries",
    [
        (1.0, 0.1, 4, 3),  # 0.7 s with 2 retries is too soon; 3 give up at 1.9 s
        (0.7, 0.1, 4, 2),  # exactly a deadline: that one
        (0.1, 0.1, 4, 1),  # below the first deadline (3·R): the fewest TCP_SYNCNT takes
        (127.0, 1.0, 0, 6),  # the kernel's own default before 6.5
        (131.0, 1.0, 4, 6),  # ... and on 6.5+
        (20.0, 0.2, 0, 6),  # 12.7 s at 5 retries, 25.4 s at 6
    ],
)
def test_fewest_retries_that_keep_trying_long_enough(give_up, rto, linear, retries):
    assert syn_give_up.syn_retries_for_give_up(give_up, rto, linear) == retries
    assert syn_give_up.syn_give_up_seconds(rto, retries, linear) >= give_up - 1e-9
    if retries > 1:
        assert syn_give_up.syn_give_up_seconds(rto, retries - 1, linear) < give_up


def test_no_count_reaches_a_deadline_past_the_maximum():
    assert syn_give_up.syn_retries_for_give_up(1e9, 0.004, 4, max_retries=127) is None


def test_rules_take_the_instance_value_unless_they_give_their_own():
    rules = desired.parse_rules(
        [
            {"dest": "10.0.0.0/8", "rto_ms": 100},
            {"dest": "10.1.0.0/16", "rto_ms": 100, "syn_give_up_s": 0.7},
            {"dest": "10.2.0.0/16", "rto_ms": 100, "syn_give_up_s": None},  # as Ansible passes an omitted key
        ],
        250,
        syn_give_up_s=1.0,
        linear_timeouts=4,
    )
    assert [rule.syn_retries for rule in rules] == [3, 2, 3]
    assert desired.parse_rules([{"dest": "10.0.0.0/8", "rto_ms": 100}], 250)[0].syn_retries is None


@pytest.mark.parametrize("value", [0, -1, "2", True])
def test_syn_give_up_s_must_be_a_positive_number(value):
    with pytest.raises(desired.ConfigError, match="syn_give_up_s must be a positive number"):
        desired.parse_rules([{"dest": "10.0.0.0/8", "rto_ms": 100, "syn_give_up_s": value}], 250)


def test_syn_give_up_s_past_what_syncnt_reaches_is_refused():
    with pytest.raises(desired.ConfigError, match="give a shorter syn_give_up_s"):
        desired.parse_rules([{"dest": "10.0.0.0/8", "rto_ms": 4, "syn_give_up_s": 1e9}], 250)
