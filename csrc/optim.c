/* optim.c - SGD with momentum, weight decay and Nesterov (torch.optim.SGD semantics). */
#include "internal.h"

void csub_sgd_step(float *w, const float *grad, float *velocity, int64_t n,
                   float lr, float momentum, float weight_decay, int nesterov,
                   int first_step)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > CSUB_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] + weight_decay * w[i];
        if (momentum != 0.0f) {
            float v = first_step ? g : momentum * velocity[i] + g;
            velocity[i] = v;
            g = nesterov ? g + momentum * v : v;
        }
        w[i] -= lr * g;
    }
}
