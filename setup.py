from setuptools import Extension, setup

setup(ext_modules=[Extension("roost._cidext", ["roost/_cidext.c"], optional=True)])
