# GPAW build configuration used by scripts/setup.sh (serial build, no MPI headers needed).
mpi = False
compiler = 'g++'
fftw = True
scalapack = False
libraries = ['xc', 'fftw3', 'openblas']
