/* A build without nvcc still links backend_cuda_create, which refuses with a clear message. */
#include <criterion/criterion.h>
#include <string.h>

#include "worker/backend/backend.h"

Test(cuda_unavailable, says_the_build_has_no_cuda)
{
#ifdef SLUICE_HAVE_CUDA
    cr_skip_test("this build has CUDA: the refusal is for builds without nvcc");
#else
    struct backend *b = (struct backend *)1;
    struct model m = {0};
    struct backend_options opt = {0};
    char err[256] = "";
    cr_expect_lt(backend_cuda_create(&b, &m, &opt, err, sizeof err), 0);
    cr_expect_null(b);
    cr_expect_str_eq(err, "this sluice-worker was built without CUDA (nvcc not found at build time)");
#endif
}
