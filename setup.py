"""Package metadata comes from settings.ini (the nbdev project file), so there is one place to change it."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

readme = Path(__file__).parent/'README.md'
setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license='Apache-2.0', url=cfg['git_url'],
    keywords=cfg['keywords'].split(), python_requires='>=' + cfg['min_python'],
    # configs/ (top level, as the README's commands use it) also ships inside the wheel as avlearn.configs, so that an
    # installed package finds them by name: avlearn-train --config gdt_k400
    packages=setuptools.find_packages(include=['avlearn', 'avlearn.*']) + ['avlearn.configs'],
    package_dir={'avlearn.configs': 'configs'},
    package_data={'avlearn.configs': ['*.yaml']},
    include_package_data=True, zip_safe=False,
    install_requires=cfg['requirements'].split(),
    # lab: the browser test of JupyterLab (make test-lab), driving Debian's chromium through chromium-driver
    extras_require={'dev': cfg['dev_requirements'].split(), 'lab': ['selenium>=4.10']},
    entry_points={'console_scripts': cfg['console_scripts'].split(), 'nbdev': [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
    classifiers=['Programming Language :: Python :: 3', 'Topic :: Scientific/Engineering :: Artificial Intelligence'],
)
