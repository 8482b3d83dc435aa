#!/usr/bin/env bash
# The sandbox names carry this script's pid as their owner: the pytest session's sweep of
# interrupted runs (tests/sandbox.py) removes a sandbox only once its owner is gone.
# The module runs on the host's own Python, as on a real managed host.
set -eux
ansible-playbook --version  # the ansible-core under test, for the log
ansible-playbook smoke.yml -i "${INVENTORY_PATH}" -e ansible_python_interpreter=/usr/bin/python3 \
    -e sandbox_owner_pid=$$ "$@"
