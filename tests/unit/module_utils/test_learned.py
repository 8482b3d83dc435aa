"""learned.py: what the info module says a learned host gets, worked out as the program does."""

import ipaddress

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import learned, rto_program

HZ = 250
# min 20 ms (5 jiffies), factor 2, 3 samples, 600 s, budget 3, HZ 250
AUTO_CONFIG = (5, 200, 3, 600, 3, HZ)
MAX_JIFFIES = 250  # 1000 ms
NOW = 1000 * 10**9


def entry(srtt_us, rttvar_us, samples=5, retransmits=0, age_s=1, address="10.1.2.3"):
    key = rto_program.LEARNED_KEY.pack(rto_program.trie_address(ipaddress.ip_address(address)).packed)
    value = rto_program.LEARNED_VALUE.pack(NOW - age_s * 10**9, srtt_us * 8, rttvar_us * 4, samples, retransmits)
    return learned.host_view(key, value, AUTO_CONFIG, MAX_JIFFIES, NOW)


def test_a_learned_host_gets_srtt_plus_four_rttvar_times_the_factor_in_whole_jiffies():
    host = entry(srtt_us=30000, rttvar_us=5000)  # 30 ms + 4 x 5 ms = 50 ms, x 2 = 100 ms = 25 jiffies
    assert (host["host"], host["estimate_us"], host["rto_ms"], host["fallback"]) == ("10.1.2.3", 50000, 100, None)
    assert entry(srtt_us=30001, rttvar_us=5000)["rto_ms"] == 104  # rounded up to the next jiffy


def test_the_learned_value_is_clamped_to_the_minimum_and_the_maximum():
    assert entry(srtt_us=200, rttvar_us=50)["rto_ms"] == 20  # a LAN round trip: auto_min_ms
    assert entry(srtt_us=400000, rttvar_us=100000)["rto_ms"] == 1000  # 1.6 s: auto_max_ms


def test_hosts_without_enough_fresh_clean_knowledge_get_the_maximum():
    assert entry(30000, 5000, samples=2)["fallback"] == learned.TOO_FEW_SAMPLES
    assert entry(30000, 5000, retransmits=4)["fallback"] == learned.OVER_BUDGET
    assert entry(30000, 5000, retransmits=3)["fallback"] is None  # at the budget, not above it
    assert entry(30000, 5000, age_s=601)["fallback"] == learned.EXPIRED
    assert {entry(30000, 5000, samples=2)["rto_ms"], entry(30000, 5000, age_s=601)["rto_ms"]} == {1000}


def test_ipv6_hosts_read_as_ipv6():
    assert entry(30000, 5000, address="fd00::1")["host"] == "fd00::1"
