"""What tests/ and bench/ share: kernel sandboxes, the playbook and module runners, program builds,
HZ and the views of the kernel through tools that share no code with the collection.

Imported as ansible_collections.netbpf.tcp_rto.tests.support, through the collections root
.cache/collections (a symlink to this repository, made by scripts/setup-env): pytest finds it through
pytest.ini's pythonpath, bench/run and the scripts the tests start through PYTHONPATH, and
ansible-test units through its own collection tree.
"""
