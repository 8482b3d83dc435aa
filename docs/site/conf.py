"""Sphinx configuration of the collection's docs site (built by docs/site/build.py).

Started from `antsibull-docs sphinx-init --use-current --squash-hierarchy netbpf.tcp_rto`; changed:
myst_parser for the Markdown guides, intersphinx from a local inventory that build.py writes (the
build runs offline), own titles.
"""

project = "netbpf.tcp_rto"

title = "netbpf.tcp_rto documentation"
html_short_title = "netbpf.tcp_rto"
html_title = "netbpf.tcp_rto documentation"

extensions = ["sphinx.ext.intersphinx", "sphinx_antsibull_ext", "myst_parser"]
intersphinx_mapping = {"ansible_devel": ("https://docs.ansible.com/projects/ansible/devel/", "ansible_docs.inv")}
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Headings of the guides get anchors, so that [text](fleet.md#rollback) links work.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_theme_options = {"collapse_navigation": False, "navigation_depth": 3}
html_context = {"display_github": False}
display_version = False

html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

default_role = "any"
nitpicky = True
