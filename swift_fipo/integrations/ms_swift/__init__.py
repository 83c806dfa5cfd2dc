"""The ms-swift host: ``swift rlhf`` and ``megatron rlhf`` with ``--loss_type fipo``.

- ``layout``: where things are in ms-swift (module paths, method names, source markers); no imports;
- ``arguments``: the plugin's ``--fipo_*`` flags, presets and the checks at parse time, before a model loads;
- ``hooks``: the adapter for ms-swift's native FIPO hook (>= 4.2.2, HF and Megatron), every patch declared
  once, ``install()`` / ``uninstall()``;
- ``legacy``: ms-swift 3.11 - 4.2.1, FIPO as the DAPO loss with reweighted advantages;
- ``token_capture``: ``--fipo_log_tokens``;
- ``doctor``: ``diagnose()``, this host's part of ``swift-fipo doctor``.

Names load lazily: this package is imported at interpreter start (through ``layout``).
"""

from swift_fipo._lazy import lazy_exports

__getattr__ = lazy_exports(globals(), {
    f'{__name__}.hooks': ('install', 'uninstall', 'is_patched', 'native_fipo_influence'),
    f'{__name__}.doctor': ('diagnose',),
})
